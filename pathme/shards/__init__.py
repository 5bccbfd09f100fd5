"""Per-slide runs split over the tasks of a cluster: shards, claims, records, staging, throughput and status."""

from pathme.shards.records import Plan, RunRecords
from pathme.shards.run import Interrupted, ShardRun, WorkItem
from pathme.shards.shard import WHOLE, Shard, ShardError, resolve_shard
from pathme.shards.staging import StageError, Stager, check_room
from pathme.shards.status import RunStatus, run_status

__all__ = [
    "WHOLE",
    "Interrupted",
    "Plan",
    "RunRecords",
    "RunStatus",
    "Shard",
    "ShardError",
    "ShardRun",
    "StageError",
    "Stager",
    "WorkItem",
    "check_room",
    "resolve_shard",
    "run_status",
]
