"""The tracker service: experiments, runs, params, metrics, artifacts, search and comparison.

Work in progress (issue 5): the storage layer and the run filter language exist; the gRPC
servicer comes next."""
