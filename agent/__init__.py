"""The sidecar agent (issue 3): one SQLite writer for many trainer processes. Not built yet."""
