"""Ray: the compute cluster the heavy data stages run on (aiplat.scale.ray_cluster).

Local: no configuration; the head `aiplat stack up ray` runs when it is up, else a private Ray
instance starts inside the step that first needs it (127.0.0.1 only) and stops with the step. Prod:
the KubeRay cluster's head, `AIPLAT_RAY_ADDRESS` (`ray://<head service>:10001`,
deploy/ray/ray-cluster.yaml), and its dashboard's URL for the links in run logs and metadata.
"""

from __future__ import annotations

from typing import Optional

import dagster as dg
from pydantic import Field


class RayResource(dg.ConfigurableResource):
    """Where Ray Data pipelines run; one code path for the laptop and the cluster."""

    address: str = Field(default="", description="Ray cluster to join (ray://host:10001); empty = the local "
                         "head of `aiplat stack up ray`, else a private instance started by the step that needs it")
    dashboard_url: str = Field(default="", description="The cluster's dashboard, linked from run logs and metadata")
    num_cpus: Optional[int] = Field(default=None, ge=1, description="CPUs of a private local instance "
                                    "(default: the machine's)")

    def cluster(self):
        from aiplat.scale.ray_cluster import RayCluster

        return RayCluster(address=self.address, num_cpus=self.num_cpus, dashboard_url=self.dashboard_url)

    @classmethod
    def local(cls) -> "RayResource":
        return cls()

    @classmethod
    def prod(cls) -> "RayResource":
        return cls(address=dg.EnvVar("AIPLAT_RAY_ADDRESS"), dashboard_url=dg.EnvVar("AIPLAT_RAY_DASHBOARD_URL"))
