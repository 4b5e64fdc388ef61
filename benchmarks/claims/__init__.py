"""The stages of benchmarks/seed_claims.py (its docstring says what each stage measures), one module per group:

- `config`: the benchmark's fixed choices (shapes, methods, variants, thresholds) and a run's `Settings`.
- `work`: the work folder (cached scores and stage wall times) with the settings: the context every stage takes.
- `train`: training a modular run, a student or a teacher through the CLI (resuming a stopped one).
- `score`: which assemblies to score, and scoring them into rows (cached).
- `students`: the SFT / KD / pseudo-label students, and second seeds where margins are small.
- `plans`: the profile and the planner's pick at half the teacher's parameters.
- `timing`: every model timed round-robin beside the teacher, and the speed ratios.
- `stages`: the Multi30k and SQuAD stages, in order.
- `report`: the claims, the results record, the table and the plot: from rows alone, so that
  `--from-results` rebuilds them from a committed results file.
"""
