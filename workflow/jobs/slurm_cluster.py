"""What the SLURM cluster allows, asked before the first submission (torch-free).

- :func:`partition_limits`: each partition's MaxTime in minutes (``sinfo -h -o "%R|%l"``), so a
  group job's time limit can be cut to it (workflow.study.resources.grouped_runtime);
- :func:`cluster_problems`: the profile's account and partitions against ``sacctmgr`` (the
  user's associations) and ``sinfo`` (the partitions), one sentence per problem, in a second or
  two, instead of the first ``sbatch`` failing after the executor's retries.

Both use only the SLURM client tools (``man sinfo``, ``man sacctmgr``); without them (a dry run
on a laptop) they report nothing.
"""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess

_TIME = re.compile(r"^(?:(\d+)-)?\d+(?::\d+){0,2}$")


def slurm_minutes(text: str) -> int | None:
    """A SLURM time limit (``sinfo %l``: ``[D-]HH:MM:SS``, ``MM:SS``, ``MM``, ``D-HH``) in whole
    minutes; None for ``infinite``/``UNLIMITED`` or text SLURM does not write."""
    text = text.strip()
    if not _TIME.match(text):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:  # D-HH[:MM[:SS]]
        hours, minutes = (parts + [0, 0])[:2]
    elif len(parts) == 3:  # HH:MM:SS
        hours, minutes = parts[:2]
    else:  # MM[:SS]
        hours, minutes = 0, parts[0]
    return int(days or 0) * 1440 + hours * 60 + minutes


def _run(args: list[str], timeout_s: float) -> str | None:
    if shutil.which(args[0]) is None:
        return None
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None
    return proc.stdout if proc.returncode == 0 else None


def partition_limits(timeout_s: float = 10.0) -> dict[str, int | None] | None:
    """``{partition: MaxTime in minutes, None = unlimited}`` from one ``sinfo`` call; None when
    there is no ``sinfo`` or it fails."""
    out = _run(["sinfo", "-h", "-o", "%R|%l"], timeout_s)
    if out is None:
        return None
    limits = {}
    for line in out.splitlines():
        name, _, limit = line.partition("|")
        if name.strip():
            limits[name.strip()] = slurm_minutes(limit)
    return limits


def user_accounts(user: str | None = None, timeout_s: float = 10.0) -> set[str] | None:
    """Accounts ``user`` (default: this user) may submit with (``sacctmgr show assoc``); None when
    ``sacctmgr`` is missing or fails (no accounting: nothing to check)."""
    out = _run(["sacctmgr", "-n", "-P", "show", "assoc", f"user={user or getpass.getuser()}", "format=account"],
               timeout_s)
    return None if out is None else {line.strip() for line in out.splitlines() if line.strip()}


def cluster_problems(account: str | None, partitions: dict[str, str], *, user: str | None = None,
                     limits: dict[str, int | None] | None = None, accounts: set[str] | None = None) -> list[str]:
    """What would make the first ``sbatch`` fail: an account the user has no association with, a
    partition the cluster does not have.

    Args:
        account: the ``slurm_account`` resource (None: the cluster's default account).
        partitions: ``{partition: where it is set}`` (e.g. ``"default-resources: slurm_partition"``).
        user: whose associations to read (default: this user).
        limits / accounts: :func:`partition_limits` / :func:`user_accounts` already read (else asked).

    Returns:
        One sentence per problem, naming the value, where it is set and what the cluster has;
        empty when all is well or when the tools are missing.
    """
    problems = []
    if account:
        accounts = user_accounts(user) if accounts is None else accounts
        if accounts is not None and account not in accounts:
            problems.append(
                f"slurm_account {account!r} (the profile's default-resources) is not an account of user "
                f"{user or getpass.getuser()!r}; this user's accounts: {sorted(accounts) or 'none'} "
                "(`sacctmgr -n show assoc user=$USER format=account`)")
    limits = partition_limits() if limits is None else limits
    if limits is not None:
        for partition, where in sorted(partitions.items()):
            if partition not in limits:
                problems.append(f"slurm_partition {partition!r} ({where}) is not a partition of this cluster; "
                                f"its partitions: {sorted(limits)} (`sinfo -s`)")
    return problems


def profile_resources(resource_settings) -> tuple[dict, dict[str, dict]]:
    """``(default-resources, set-resources)`` of the Snakemake profile as written (raw values):
    ``({"slurm_partition": "cpu", ...}, {"train": {"slurm_partition": "gpu"}})``.

    Args:
        resource_settings: ``workflow.resource_settings`` (snakemake.settings.types.ResourceSettings).
    """
    def unquote(value):  # a command line's --set-resources train:slurm_partition='gpu' keeps its quotes
        if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            return value[1:-1]
        return value

    def raw(resources) -> dict:
        return {name: unquote(getattr(value, "raw", value)) for name, value in dict((resources or {}).items()).items()}

    overwrite = {rule: raw(res) for rule, res in dict(resource_settings.overwrite_resources or {}).items()}
    return raw(resource_settings.default_resources), overwrite


def train_partition(stage: str, stage_partition: str | None, profile: tuple[dict, dict]) -> tuple[str | None, str]:
    """The partition a training job of ``stage`` goes to, and where that is set: the profile's
    set-resources of ``train`` (Snakemake lets it win), else the stage's
    ``resources.slurm_partition``, else the profile's default-resources."""
    defaults, overwrite = profile
    if (overwrite.get("train") or {}).get("slurm_partition"):
        return overwrite["train"]["slurm_partition"], "the profile's set-resources: train: slurm_partition"
    if stage_partition:
        return stage_partition, f"stages.{stage}.resources.slurm_partition"
    return defaults.get("slurm_partition"), "the profile's default-resources: slurm_partition"


def profile_problems(stage_partitions: dict[str, str | None], profile: tuple[dict, dict]) -> list[str]:
    """:func:`cluster_problems` for a study: the profile's account, its default partition and the
    partition of every stage's training jobs (``stage_partitions``: stage -> its own partition)."""
    defaults, overwrite = profile
    partitions = {}
    if defaults.get("slurm_partition"):
        partitions[defaults["slurm_partition"]] = "the profile's default-resources: slurm_partition"
    for stage, own in stage_partitions.items():
        partition, where = train_partition(stage, own, profile)
        if partition:
            partitions.setdefault(partition, where)
    account = (overwrite.get("train") or {}).get("slurm_account") or defaults.get("slurm_account")
    return cluster_problems(account, partitions)
