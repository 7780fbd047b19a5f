"""What the dashboard knows about the cluster: one store, updated by the app only."""

from __future__ import annotations

from dataclasses import dataclass, field

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb


@dataclass
class State:
    """The latest cluster, jobs, trials and models.

    Trials are kept for the jobs whose trials were loaded (a job screen was opened); finished
    trials arriving on a job's watch are merged in by number, so a trial that was RUNNING
    in the first load is replaced by its final form.
    """

    cluster: pb.Cluster | None = None
    jobs: dict[str, pb.Job] = field(default_factory=dict)
    trials: dict[str, dict[int, pb.TrialInfo]] = field(default_factory=dict)
    models: list[pb.Model] = field(default_factory=list)

    def set_jobs(self, jobs: list[pb.Job]) -> None:
        self.jobs = {j.job_id: j for j in jobs}

    def apply_event(self, event: pb.JobEvent) -> pb.TrialInfo | None:
        """Record a job event; returns the trial it carried if that job's trials are kept."""
        self.jobs[event.job.job_id] = event.job
        kept = self.trials.get(event.job.job_id)
        if kept is not None and event.HasField("trial"):
            kept[event.trial.number] = event.trial
            return event.trial
        return None

    def set_trials(self, job_id: str, trials: list[pb.TrialInfo]) -> None:
        self.trials[job_id] = {t.number: t for t in trials}

    def job_trials(self, job_id: str) -> list[pb.TrialInfo]:
        return [t for _, t in sorted(self.trials.get(job_id, {}).items())]

    def running_job_ids(self) -> set[str]:
        """Jobs that the cluster says have trials running now."""
        if self.cluster is None:
            return set()
        return {r.split("/", 1)[0] for n in self.cluster.nodes for r in n.running}
