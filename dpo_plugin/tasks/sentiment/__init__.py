"""The Pang & Lee movie-review sentiment task, in one place.

- `pairs`: the seeded sentence split and `sentiment-pairs` (attribute pairs from human labels);
- `gold`: the gold sentiment classifier and `GoldSentimentReward`;
- `generation`: `sentiment-generation`, the DPO paper's controlled sentiment generation (samples of the reference
  ranked by the gold reward), built once and cached.

The data layer lists `sentiment-pairs` and `sentiment-generation` as built-ins by entry point, so loading other data
never imports this task, and this task imports the models only to generate.
"""
