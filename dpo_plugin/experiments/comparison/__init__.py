"""`dpo-plugin compare`: the DPO paper's comparison (DPO, IPO, TDPO2 and a reward model + PPO on the same pairs).

`command` runs it end to end; `runs` trains and evaluates one method; `claims` checks two claims from the papers;
`report` writes the tables and plots.
"""
