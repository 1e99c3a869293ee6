"""`make bench`: speed and memory figures as JSON, each beside a peer measured in the same run."""
