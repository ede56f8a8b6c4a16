"""Turning completions into verdicts, and verdicts into training targets: final-answer extraction for
math and multiple choice (`answers`), code grading in the sandbox with trusted, rewritten tests (`code`,
`trusted_tests`, and `canonical`, the value encoding a sandboxed program reports), the dispatch of one
problem to its grader (`grade`), majority voting, pass@k and the failure rule (`voting`), graded
consistency of one problem's samples (`graded_measures`) and distill's selection policy, which voted
samples become training examples (`selection`). Pure logic over problems and completions, plus the
sandbox."""
