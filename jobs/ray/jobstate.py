"""What a Ray job ended as, in nibt-audit's exit codes; which jobs of a run date are active.

Runs with the Python that has Ray (the one beside the ``ray`` binary), called by
``submit.sh``:

    python jobstate.py active ADDRESS STEP DATE   # submission ids still pending or running
    python jobstate.py result ADDRESS SUBMISSION_ID  # exits 0 / 3 / 4 / 2 / 1 like nibt-audit

``ray job submit`` exits 1 for any failed job and 0 for a stopped one; the job's
``driver_exit_code`` carries the entrypoint's own code, so a partial run (3), a
failed report after a complete audit (4) and a bad configuration (2) stay
distinct from a crash (1).
"""

from __future__ import annotations

import sys

EXIT_OK, EXIT_CRASH, EXIT_CONFIG, EXIT_PARTIAL, EXIT_REPORT = 0, 1, 2, 3, 4
ACTIVE = {"PENDING", "RUNNING"}


def exit_code(status: str, driver_exit_code: int | None) -> int:
    """Map a finished job to nibt-audit's exit codes (a stopped job counts as a crash)."""
    if status == "SUCCEEDED":
        return EXIT_OK if driver_exit_code in (None, 0) else EXIT_CRASH
    if status == "FAILED" and driver_exit_code in (EXIT_CRASH, EXIT_CONFIG, EXIT_PARTIAL,
                                                      EXIT_REPORT):
        return int(driver_exit_code)
    return EXIT_CRASH


def _status(job) -> str:
    """``JobStatus`` as its plain name (``"RUNNING"``)."""
    return str(getattr(job.status, "value", job.status))


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def active(address: str, step: str, date: str) -> list[str]:
    """Submission ids of this step's jobs for ``date`` that have not finished."""
    out = []
    for job in _client(address).list_jobs():
        meta = job.metadata or {}
        if _status(job) in ACTIVE and meta.get("nibt_step") == step \
                and meta.get("nibt_date") == date:
            out.append(job.submission_id)
    return out


def result(address: str, submission_id: str) -> int:
    """Report a job's final state on stderr and return its exit code."""
    try:
        info = _client(address).get_job_info(submission_id)
    except Exception as e:  # never submitted (upload refused, cluster unreachable)
        print(f"ray job {submission_id}: no such job ({type(e).__name__}: {e}) -> exit 1",
              file=sys.stderr)
        return EXIT_CRASH
    status = _status(info)
    code = exit_code(status, info.driver_exit_code)
    message = (info.message or "").splitlines()[0] if info.message else ""
    print(f"ray job {submission_id}: {status}, driver exit code {info.driver_exit_code}"
          f" -> exit {code}{': ' + message if message else ''}", file=sys.stderr)
    return code


def main(argv: list[str]) -> int:
    """Command line: ``active ADDRESS STEP DATE`` or ``result ADDRESS SUBMISSION_ID``."""
    if len(argv) == 4 and argv[0] == "active":
        print("\n".join(active(*argv[1:])))
        return 0
    if len(argv) == 3 and argv[0] == "result":
        return result(argv[1], argv[2])
    print(__doc__, file=sys.stderr)
    return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
