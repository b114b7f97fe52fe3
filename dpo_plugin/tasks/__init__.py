"""Tasks built from the offline assets, each in one place: its data, its gold reward, its generated pairs."""
