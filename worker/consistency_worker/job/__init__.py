"""What one stage run is handed and how it fails: `StageContext` (the store, shard, cache directory,
manifest, progress and the problems file read once; `context`) and the stage exceptions that decide
whether another attempt may succeed (`errors`). Lives below the engines so that shared code such as
`engines.answering` can take a context without importing the stage layer."""
