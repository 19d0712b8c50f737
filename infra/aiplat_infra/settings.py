"""What differs between stacks (dev, prod); everything else is fixed in stack.py."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    environment: str                       # dev | prod: part of every name
    region: str = "eu-west-1"
    kubernetes_version: str = "1.33"
    vpc_cidr: str = "10.40.0.0/16"
    zones: tuple[str, ...] = ("a", "b", "c")
    multi_az: bool = True                  # RDS Multi-AZ, Redis automatic failover
    system_instance_type: str = "m6i.xlarge"
    inference_instance_type: str = "g6e.xlarge"   # 1x L40S 48 GB: one 7-8B model in bf16 per GPU
    inference_gpus_per_node: int = 1
    inference_min_nodes: int = 1           # the live endpoint always has a GPU
    inference_max_nodes: int = 4
    training_instance_types: tuple[str, ...] = ("g6e.xlarge", "g5.xlarge", "g6.xlarge")  # spot: diversify
    training_gpus_per_node: int = 1
    training_max_nodes: int = 2
    db_instance_class: str = "db.t4g.medium"
    redis_node_type: str = "cache.t4g.small"

    @property
    def prefix(self) -> str:
        return f"aiplat-{self.environment}"

    @classmethod
    def from_pulumi_config(cls) -> "Settings":
        import pulumi

        cfg = pulumi.Config("aiplat-infra")
        aws = pulumi.Config("aws")
        return cls(
            environment=cfg.require("environment"),
            region=aws.get("region") or cls.region,
            inference_max_nodes=cfg.get_int("inferenceMaxNodes") or cls.inference_max_nodes,
            training_max_nodes=cfg.get_int("trainingMaxNodes") or cls.training_max_nodes,
            multi_az=cfg.get_bool("multiAz") if cfg.get("multiAz") is not None else cls.multi_az,
        )
