"""The tracker service: experiments, runs, params, metrics, artifacts, search and comparison."""
