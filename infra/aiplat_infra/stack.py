"""The resources of one stack. Placement facts (node labels, taints) are imported from the platform
(resources.kubernetes.GpuPlacement, the PriorityClass names) so the cluster offers exactly what the
training Jobs and the vLLM Deployments ask for:

  inference  on-demand GPU nodes, always at least one; label nvidia.com/gpu.present=true (what the
             vLLM Deployments select), taint nvidia.com/gpu (they tolerate it)
  training   spot GPU nodes scaled from zero; label aiplat.io/node-pool=gpu (what fine-tune Jobs
             select), taints nvidia.com/gpu and aiplat.io/capacity=spot (only fine-tunes tolerate
             the second, so inference never lands on capacity that can vanish)
  system     on-demand CPU nodes for Dagster, the gateway and the cluster add-ons
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from aiplat_infra.settings import Settings
from resources.kubernetes import GPU_RESOURCE, INFERENCE_PRIORITY_CLASS, TRAINING_PRIORITY_CLASS, GpuPlacement

GPU_AMI = "AL2023_x86_64_NVIDIA"
CPU_AMI = "AL2023_x86_64_STANDARD"
AUTOSCALER_TAG = "k8s.io/cluster-autoscaler"


@dataclass
class Stack:
    settings: Settings
    cluster: aws.eks.Cluster
    node_groups: dict[str, aws.eks.NodeGroup]
    buckets: dict[str, aws.s3.Bucket]
    database: aws.rds.Instance
    redis: aws.elasticache.ReplicationGroup
    dagster_role: aws.iam.Role
    extra: dict[str, pulumi.Resource] = field(default_factory=dict)


def _tags(s: Settings, **more: str) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": "ai-platform", "aiplat.io/environment": s.environment, **more}


def _assume(service: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]})


def node_pools(s: Settings) -> dict[str, dict]:
    """Labels, taints, capacity and size of each node group: plain data, asserted by the tests."""
    training = GpuPlacement()
    gpu_taint = {"key": GPU_RESOURCE, "value": "true", "effect": "NO_SCHEDULE"}
    return {
        "system": {
            "capacity_type": "ON_DEMAND", "ami_type": CPU_AMI, "instance_types": [s.system_instance_type],
            "min": 2, "desired": 2, "max": 4,
            "labels": {"aiplat.io/node-pool": "system", "aiplat.io/capacity": "on-demand"},
            "taints": [],
        },
        "inference": {
            "capacity_type": "ON_DEMAND", "ami_type": GPU_AMI, "instance_types": [s.inference_instance_type],
            "min": s.inference_min_nodes, "desired": s.inference_min_nodes, "max": s.inference_max_nodes,
            "gpus_per_node": s.inference_gpus_per_node,
            "labels": {"aiplat.io/node-pool": "inference", "nvidia.com/gpu.present": "true",
                       "aiplat.io/capacity": "on-demand", "aiplat.io/priority-class": INFERENCE_PRIORITY_CLASS},
            "taints": [gpu_taint],
        },
        "training": {
            "capacity_type": "SPOT", "ami_type": GPU_AMI, "instance_types": list(s.training_instance_types),
            "min": 0, "desired": 0, "max": s.training_max_nodes,
            "gpus_per_node": s.training_gpus_per_node,
            "labels": {training.node_pool_label: training.node_pool, "nvidia.com/gpu.present": "true",
                       training.capacity_taint_key: training.capacity_taint_value,
                       "aiplat.io/priority-class": TRAINING_PRIORITY_CLASS},
            "taints": [gpu_taint, {"key": training.capacity_taint_key, "value": training.capacity_taint_value,
                                   "effect": "NO_SCHEDULE"}],
        },
    }


def _autoscaler_tags(cluster_name: str, pool: dict) -> dict[str, str]:
    # Scale from zero: with no node to look at, the cluster autoscaler learns a group's labels,
    # taints and GPUs from these tags.
    tags = {f"{AUTOSCALER_TAG}/enabled": "true", f"{AUTOSCALER_TAG}/{cluster_name}": "owned"}
    for key, value in pool["labels"].items():
        tags[f"{AUTOSCALER_TAG}/node-template/label/{key}"] = value
    effect = {"NO_SCHEDULE": "NoSchedule", "NO_EXECUTE": "NoExecute", "PREFER_NO_SCHEDULE": "PreferNoSchedule"}
    for taint in pool["taints"]:
        tags[f"{AUTOSCALER_TAG}/node-template/taint/{taint['key']}"] = f"{taint['value']}:{effect[taint['effect']]}"
    if pool.get("gpus_per_node"):
        tags[f"{AUTOSCALER_TAG}/node-template/resources/{GPU_RESOURCE}"] = str(pool["gpus_per_node"])
    return tags


def build(s: Settings, redis_auth_token: pulumi.Input[str] | None = None) -> Stack:
    p = s.prefix
    account = aws.get_caller_identity().account_id
    key = aws.kms.Key(f"{p}-key", description=f"{p}: EKS secrets, S3, RDS, ElastiCache", enable_key_rotation=True,
                      deletion_window_in_days=30, tags=_tags(s),
                      # The account administers the key; services use it through their IAM roles' grants.
                      policy=json.dumps({"Version": "2012-10-17", "Statement": [{
                          "Sid": "AccountAdministers", "Effect": "Allow",
                          "Principal": {"AWS": f"arn:aws:iam::{account}:root"}, "Action": "kms:*", "Resource": "*"}]}))

    # --- network: private subnets for everything, public ones only for the NAT gateway and load balancers
    vpc = aws.ec2.Vpc(f"{p}-vpc", cidr_block=s.vpc_cidr, enable_dns_hostnames=True, enable_dns_support=True,
                      tags=_tags(s, Name=f"{p}-vpc"))
    aws.ec2.DefaultSecurityGroup(f"{p}-default-sg", vpc_id=vpc.id, tags=_tags(s))  # no rules: deny all
    igw = aws.ec2.InternetGateway(f"{p}-igw", vpc_id=vpc.id, tags=_tags(s))
    public_rt = aws.ec2.RouteTable(f"{p}-public", vpc_id=vpc.id,
                                   routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}], tags=_tags(s))
    base = s.vpc_cidr.split(".")
    public, private = [], []
    for i, zone in enumerate(s.zones):
        az = f"{s.region}{zone}"
        pub = aws.ec2.Subnet(f"{p}-public-{zone}", vpc_id=vpc.id, availability_zone=az,
                             cidr_block=f"{base[0]}.{base[1]}.{200 + i}.0/24", map_public_ip_on_launch=False,
                             tags=_tags(s, **{"kubernetes.io/role/elb": "1"}))
        aws.ec2.RouteTableAssociation(f"{p}-public-{zone}", subnet_id=pub.id, route_table_id=public_rt.id)
        public.append(pub)
        private.append(aws.ec2.Subnet(f"{p}-private-{zone}", vpc_id=vpc.id, availability_zone=az,
                                      cidr_block=f"{base[0]}.{base[1]}.{32 * i}.0/19",
                                      tags=_tags(s, **{"kubernetes.io/role/internal-elb": "1"})))
    eip = aws.ec2.Eip(f"{p}-nat", domain="vpc", tags=_tags(s))
    nat = aws.ec2.NatGateway(f"{p}-nat", allocation_id=eip.id, subnet_id=public[0].id, tags=_tags(s))
    private_rt = aws.ec2.RouteTable(f"{p}-private", vpc_id=vpc.id,
                                    routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat.id}], tags=_tags(s))
    for zone, subnet in zip(s.zones, private):
        aws.ec2.RouteTableAssociation(f"{p}-private-{zone}", subnet_id=subnet.id, route_table_id=private_rt.id)
    private_ids = [sn.id for sn in private]

    # --- EKS
    cluster_role = aws.iam.Role(f"{p}-eks", assume_role_policy=_assume("eks.amazonaws.com"), tags=_tags(s))
    aws.iam.RolePolicyAttachment(f"{p}-eks-cluster", role=cluster_role.name,
                                 policy_arn="arn:aws:iam::aws:policy/AmazonEKSClusterPolicy")
    cluster = aws.eks.Cluster(
        f"{p}-eks", name=p, version=s.kubernetes_version, role_arn=cluster_role.arn,
        vpc_config={"subnet_ids": private_ids, "endpoint_private_access": True, "endpoint_public_access": False},
        encryption_config={"provider": {"key_arn": key.arn}, "resources": ["secrets"]},
        enabled_cluster_log_types=["api", "audit", "authenticator", "controllerManager", "scheduler"],
        access_config={"authentication_mode": "API"},
        tags=_tags(s))
    node_role = aws.iam.Role(f"{p}-nodes", assume_role_policy=_assume("ec2.amazonaws.com"), tags=_tags(s))
    for policy in ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly"):
        aws.iam.RolePolicyAttachment(f"{p}-nodes-{policy}", role=node_role.name,
                                     policy_arn=f"arn:aws:iam::aws:policy/{policy}")
    groups = {}
    for name, pool in node_pools(s).items():
        groups[name] = aws.eks.NodeGroup(
            f"{p}-{name}", cluster_name=cluster.name, node_group_name=f"{p}-{name}", node_role_arn=node_role.arn,
            subnet_ids=private_ids, capacity_type=pool["capacity_type"], ami_type=pool["ami_type"],
            instance_types=pool["instance_types"],
            scaling_config={"min_size": pool["min"], "desired_size": pool["desired"], "max_size": pool["max"]},
            update_config={"max_unavailable": 1},
            labels=pool["labels"], taints=pool["taints"],
            tags=_tags(s, **_autoscaler_tags(p, pool)),
            # The cluster autoscaler owns the size between min and max.
            opts=pulumi.ResourceOptions(ignore_changes=["scalingConfig.desiredSize"]))

    # --- S3: the lake, the model store, Dagster's compute logs
    buckets = {}
    for purpose in ("lake", "models", "dagster-logs"):
        bucket = aws.s3.Bucket(f"{p}-{purpose}", bucket=f"{p}-{purpose}", force_destroy=False, tags=_tags(s))
        aws.s3.BucketPublicAccessBlock(f"{p}-{purpose}", bucket=bucket.id, block_public_acls=True,
                                       block_public_policy=True, ignore_public_acls=True, restrict_public_buckets=True)
        aws.s3.BucketServerSideEncryptionConfiguration(f"{p}-{purpose}", bucket=bucket.id, rules=[{
            "apply_server_side_encryption_by_default": {"sse_algorithm": "aws:kms", "kms_master_key_id": key.arn},
            "bucket_key_enabled": True}])
        # The model store keeps every version (signed artifacts are never overwritten in place).
        aws.s3.BucketVersioning(f"{p}-{purpose}", bucket=bucket.id,
                                versioning_configuration={"status": "Enabled"})
        buckets[purpose] = bucket
    # Server access logs of the lake and the model store go to the logs bucket.
    for purpose in ("lake", "models"):
        aws.s3.BucketLogging(f"{p}-{purpose}", bucket=buckets[purpose].id, target_bucket=buckets["dagster-logs"].id,
                             target_prefix=f"s3-access/{purpose}/")
    aws.ec2.FlowLog(f"{p}-vpc-flow", vpc_id=vpc.id, traffic_type="REJECT", log_destination_type="s3",
                    log_destination=buckets["dagster-logs"].arn.apply(lambda arn: f"{arn}/vpc-flow-logs/"),
                    tags=_tags(s))
    aws.s3.BucketLifecycleConfiguration(f"{p}-lake", bucket=buckets["lake"].id, rules=[{
        "id": "old-versions", "status": "Enabled", "filter": {},
        "noncurrent_version_expiration": {"noncurrent_days": 365},
        "abort_incomplete_multipart_upload": {"days_after_initiation": 7}}])
    # Model versions are kept (the registry points at them); only failed uploads are cleaned up.
    aws.s3.BucketLifecycleConfiguration(f"{p}-models", bucket=buckets["models"].id, rules=[{
        "id": "failed-uploads", "status": "Enabled", "filter": {},
        "abort_incomplete_multipart_upload": {"days_after_initiation": 7}}])
    aws.s3.BucketLifecycleConfiguration(f"{p}-dagster-logs", bucket=buckets["dagster-logs"].id, rules=[{
        "id": "expire-compute-logs", "status": "Enabled", "filter": {"prefix": "dagster/compute-logs/"},
        "expiration": {"days": 90}, "noncurrent_version_expiration": {"noncurrent_days": 30}}, {
        "id": "failed-uploads", "status": "Enabled", "filter": {},
        "abort_incomplete_multipart_upload": {"days_after_initiation": 7}}])

    # --- Dagster's storage: RDS PostgreSQL, reachable only from inside the VPC
    db_sg = aws.ec2.SecurityGroup(f"{p}-postgres", vpc_id=vpc.id, description="PostgreSQL from the cluster's VPC",
                                  ingress=[{"protocol": "tcp", "from_port": 5432, "to_port": 5432,
                                            "cidr_blocks": [s.vpc_cidr], "description": "cluster"}],
                                  tags=_tags(s))
    db_subnets = aws.rds.SubnetGroup(f"{p}-postgres", name=f"{p}-postgres-subnets", subnet_ids=private_ids, tags=_tags(s))
    db_params = aws.rds.ParameterGroup(f"{p}-postgres", name=f"{p}-postgres-params", family="postgres16", tags=_tags(s), parameters=[
        {"name": "rds.force_ssl", "value": "1"},                 # TLS only (the Helm values ask sslmode=require)
        {"name": "log_statement", "value": "ddl"},               # schema changes are audited
        {"name": "log_min_duration_statement", "value": "1000"},  # and queries slower than a second
    ])
    monitoring_role = aws.iam.Role(f"{p}-rds-monitoring", assume_role_policy=_assume("monitoring.rds.amazonaws.com"),
                                   tags=_tags(s))
    aws.iam.RolePolicyAttachment(f"{p}-rds-monitoring", role=monitoring_role.name,
                                 policy_arn="arn:aws:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole")
    database = aws.rds.Instance(
        f"{p}-dagster", identifier=f"{p}-dagster", engine="postgres", engine_version="16",
        instance_class=s.db_instance_class, allocated_storage=50, max_allocated_storage=200,
        storage_type="gp3", storage_encrypted=True, kms_key_id=key.arn,
        db_name="dagster", username="dagster",
        manage_master_user_password=True,            # the password lives in Secrets Manager, never here
        iam_database_authentication_enabled=True,
        multi_az=s.multi_az, publicly_accessible=False,
        db_subnet_group_name=db_subnets.name, vpc_security_group_ids=[db_sg.id],
        parameter_group_name=db_params.name, monitoring_interval=60, monitoring_role_arn=monitoring_role.arn,
        backup_retention_period=7, copy_tags_to_snapshot=True, deletion_protection=True,
        skip_final_snapshot=False, final_snapshot_identifier=f"{p}-dagster-final",
        auto_minor_version_upgrade=True, enabled_cloudwatch_logs_exports=["postgresql", "upgrade"],
        performance_insights_enabled=True, performance_insights_kms_key_id=key.arn,
        tags=_tags(s))

    # --- Feast's online store: ElastiCache Redis, encrypted, with an auth token
    redis_sg = aws.ec2.SecurityGroup(f"{p}-redis", vpc_id=vpc.id, description="Redis from the cluster's VPC",
                                     ingress=[{"protocol": "tcp", "from_port": 6379, "to_port": 6379,
                                               "cidr_blocks": [s.vpc_cidr], "description": "cluster"}],
                                     tags=_tags(s))
    redis_subnets = aws.elasticache.SubnetGroup(f"{p}-redis", name=f"{p}-redis-subnets", subnet_ids=private_ids, tags=_tags(s))
    redis = aws.elasticache.ReplicationGroup(
        f"{p}-features", replication_group_id=f"{p}-features", description=f"{p} Feast online store",
        engine="redis", engine_version="7.1", node_type=s.redis_node_type,
        num_cache_clusters=2 if s.multi_az else 1,
        automatic_failover_enabled=s.multi_az, multi_az_enabled=s.multi_az,
        at_rest_encryption_enabled=True, kms_key_id=key.arn, transit_encryption_enabled=True,
        auth_token=redis_auth_token, snapshot_retention_limit=7, auto_minor_version_upgrade=True,
        subnet_group_name=redis_subnets.name, security_group_ids=[redis_sg.id], tags=_tags(s))

    # --- IRSA: Dagster's service accounts write compute logs and read/write the lake and model store.
    oidc = aws.iam.OpenIdConnectProvider(
        f"{p}-oidc", url=cluster.identities.apply(lambda ids: ids[0]["oidcs"][0]["issuer"] if ids else ""),
        client_id_lists=["sts.amazonaws.com"], tags=_tags(s))
    trust = pulumi.Output.all(oidc.arn, oidc.url).apply(lambda a: json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Federated": a[0]}, "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {f"{a[1].removeprefix('https://')}:sub": [
                "system:serviceaccount:dagster:dagster", "system:serviceaccount:team-ml:dagster-run"]}}}]}))
    dagster_role = aws.iam.Role(f"{p}-dagster", name=f"{p}-dagster", assume_role_policy=trust, tags=_tags(s))
    policy = pulumi.Output.all(*(b.arn for b in buckets.values()), key.arn).apply(lambda a: json.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": list(a[:-1])},
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": [f"{arn}/*" for arn in a[:-1]]},
            {"Effect": "Allow", "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": [a[-1]]}]}))
    aws.iam.RolePolicy(f"{p}-dagster", role=dagster_role.id, policy=policy)

    return Stack(s, cluster, groups, buckets, database, redis, dagster_role, {"key": key, "vpc": vpc})


def export(stack: Stack) -> None:
    pulumi.export("cluster_name", stack.cluster.name)
    pulumi.export("cluster_endpoint", stack.cluster.endpoint)
    for purpose, bucket in stack.buckets.items():
        pulumi.export(f"bucket_{purpose.replace('-', '_')}", bucket.bucket)
    pulumi.export("dagster_db_host", stack.database.address)
    pulumi.export("dagster_db_secret_arn", stack.database.master_user_secrets.apply(
        lambda secrets: secrets[0]["secret_arn"] if secrets else None))
    pulumi.export("redis_endpoint", stack.redis.primary_endpoint_address)
    pulumi.export("dagster_role_arn", stack.dagster_role.arn)
