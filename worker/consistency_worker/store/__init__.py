"""Where stage artifacts live and how they are read back: `s3://` and local URIs (`uris`), the two
backends (`local`, `s3`), the `Store` facade the stages use (`facade`), the one JSONL reader of the
tree (`jsonl`), the size and sha256 checks of everything a stage manifest records (`integrity`,
`manifest`) and the per-problem generation records that generate writes and distill / evaluate read
(`generations`). Knows nothing of problems, grading or models."""
