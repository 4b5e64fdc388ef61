"""The work folder and the run's settings: the context every stage takes."""

from __future__ import annotations

from pathlib import Path

from harness import JsonCache, ScoreCache

from claims.config import Settings

SCORES_NAME = "scores.json"  # `<task>|<model key>` -> scores (and scores.weights.json: the weights each was scored on)
WALLS_NAME = "walls.json"  # stage -> wall seconds, summed over every run of the benchmark


class NotDone(Exception):
    """--report-only: this result is not in the cache (the report leaves it out and lists it as missing)."""


class Carried(NotDone):
    """--carry: this run is not trained here, an earlier results file has its rows (not missing: see claims.carry)."""


class Work:
    """The work folder (cached scores, stage wall times, training runs, logs), the settings, and what this run left
    out: stages not asked for (`skipped`) and, with --report-only, results not in the cache (`missing`)."""

    def __init__(self, settings: Settings, carry=None):
        self.settings = settings
        self.folder: Path = settings.work
        self.folder.mkdir(parents=True, exist_ok=True)
        self.scores = ScoreCache(self.folder / SCORES_NAME)
        self.walls = JsonCache(self.folder / WALLS_NAME)
        self.carry = carry  # claims.carry.Carry (--carry): runs not trained here because an earlier file has them
        self.skipped: list[str] = []
        self.missing: list[str] = []

    def check_carried(self, stage: str, out: Path, started: bool) -> None:
        """Raise claims.carry.Carried if --carry stands in for this run (it has not started here)."""
        if self.carry is not None:
            self.carry.check(stage, self._run(out), started)

    def carries(self, out: Path) -> bool:
        """Whether --carry has rows of the run in `out`."""
        return self.carry is not None and self._run(out) in self.carry.runs

    def _run(self, out: Path) -> str:
        """How a carried results file names the run in `out`: its folder relative to the work folder."""
        return out.relative_to(self.folder).as_posix() if out.is_relative_to(self.folder) else str(out)

    @property
    def report_only(self) -> bool:
        return self.settings.report_only

    def asked(self, stage: str) -> bool:
        return stage in self.settings.stages

    def cached_scores(self, key: str, folder: Path) -> dict | None:
        """The scores cached under `key` for the weights now in `folder` (None: not scored, or other weights now)."""
        return self.scores.get(key, folder, save=not self.report_only)

    def save_scores(self, key: str, folder: Path, scores: dict) -> None:
        """Cache what was just measured (a report measures nothing: `score` raises NotDone before it gets here)."""
        self.scores.put(key, folder, scores)

    def add_wall(self, stage: str, seconds: float) -> None:
        if self.report_only:  # a report's cache look-ups are not a stage's work
            return
        self.walls.data[stage] = round(self.walls.data.get(stage, 0.0) + seconds, 1)
        self.walls.save()

    def wall(self, stage: str, default: float | None = 0.0) -> float | None:
        return self.walls.data.get(stage, default)

    def not_done(self, what: str | NotDone) -> None:
        """Note a result a report found missing (a carried run is not missing: its rows come from --carry)."""
        if not isinstance(what, Carried):
            self.missing.append(str(what))

    def left_out(self) -> list[str]:
        """What the results lack: stages not asked for, then results not in the cache."""
        return [*self.skipped, *self.missing]
