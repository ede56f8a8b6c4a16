"""Problems and the datasets they come from: the problem record and its one file parser (`problems`),
dataset readers for GSM8K, MBPP, HumanEval, MMLU, JSONL and CSV (`loaders`, with `sources` fetching the
rows from local files, the store or the Hugging Face hub), the canonical form of a numeric answer that
loaders and the grader share (`numbers`), difficulty strata and stratified sampling (`strata`), leakage
checks between train and eval splits (`leakage`) and how a problem is framed as a chat prompt
(`prompts`). Reads through the store; never grades, generates or trains."""
