"""The program's resources without a cloud: run it under Pulumi's mock runtime (the mocks answer
like AWS for what the program reads back) and, for the policy scan, write what it declared as a
Terraform plan JSON. checkov has no Pulumi framework, and pulumi-aws is bridged from the Terraform
AWS provider, so each resource maps onto its Terraform type with the same attribute names in
snake_case (scripts/policy_scan.py scans that file)."""

from __future__ import annotations

import asyncio
import re

import pulumi

from aiplat_infra.settings import Settings


class RecordingMocks(pulumi.runtime.Mocks):
    """Stands in for AWS, which cannot be reached from here; records every resource with its inputs."""

    def __init__(self) -> None:
        self.resources: list[tuple[str, str, dict]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        outputs = dict(args.inputs)
        # Ids and ARNs name the type too: a bucket and its versioning share the Pulumi name.
        kind = args.typ.rsplit(":", 1)[-1]
        outputs.setdefault("arn", f"arn:aws:mock:::{kind}/{args.name}")
        if args.typ == "aws:eks/cluster:Cluster":
            outputs["identities"] = [{"oidcs": [{"issuer": f"https://oidc.eks.eu-west-1.amazonaws.com/id/{args.name}"}]}]
            outputs["endpoint"] = f"https://{args.name}.eks.amazonaws.com"
        if args.typ == "aws:rds/instance:Instance":
            outputs["address"] = f"{args.name}.rds.amazonaws.com"
            outputs["masterUserSecrets"] = [{"secretArn": f"arn:aws:secretsmanager:::{args.name}"}]
        self.resources.append((args.typ, args.name, outputs))
        return f"{kind}/{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs):
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": "000000000000", "arn": "arn:aws:iam::000000000000:root", "userId": "mock", "id": "mock"}
        return {}

    def of(self, typ: str) -> dict[str, dict]:
        return {name: inputs for t, name, inputs in self.resources if t == typ}


def declared_resources(settings: Settings) -> RecordingMocks:
    from aiplat_infra.stack import build

    # Pulumi's Outputs need the thread's event loop; after an asyncio.run() elsewhere in the process
    # (another test, a gateway call) the main thread has none, so give the program its own.
    asyncio.set_event_loop(asyncio.new_event_loop())
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project="aiplat-infra", stack=settings.environment, preview=False)
    stack = build(settings, redis_auth_token=pulumi.Output.secret("x" * 32))

    @pulumi.runtime.test
    def settle():
        # Wait for the outputs that depend on everything else, so every registration has landed.
        return pulumi.Output.all(stack.cluster.arn, stack.dagster_role.arn, stack.database.address,
                                 stack.redis.arn, *(g.arn for g in stack.node_groups.values()),
                                 *(b.arn for b in stack.buckets.values()))

    settle()
    return mocks


# Pulumi tokens whose Terraform name is not aws_<module>_<resource>.
_TF_TYPES = {
    "aws:rds/instance:Instance": "aws_db_instance",
    "aws:rds/subnetGroup:SubnetGroup": "aws_db_subnet_group",
    "aws:rds/parameterGroup:ParameterGroup": "aws_db_parameter_group",
}
_EC2_UNPREFIXED = {"vpc", "subnet", "securityGroup", "defaultSecurityGroup", "eip", "natGateway", "internetGateway",
                   "routeTable", "routeTableAssociation", "flowLog"}
# Attributes that are maps of user keys (not nested blocks): kept as they are.
_MAPS = {"tags", "tags_all", "labels"}
# Repeated blocks Pulumi names in the plural; Terraform in the singular.
_PLURAL_BLOCKS = {"rules": "rule", "parameters": "parameter", "taints": "taint", "routes": "route"}


def _snake(name: str) -> str:
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()
    return _PLURAL_BLOCKS.get(snake, snake)


def terraform_type(token: str) -> str:
    if token in _TF_TYPES:
        return _TF_TYPES[token]
    _pkg, module_resource, _cls = token.split(":")
    module, resource = module_resource.split("/")
    if module == "ec2" and resource in _EC2_UNPREFIXED:
        return f"aws_{_snake(resource)}"
    return f"aws_{module}_{_snake(resource)}"


def _values(value, key: str = ""):
    if isinstance(value, dict):
        if key in _MAPS:
            return dict(value)
        return {_snake(k): _block(_snake(k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [_values(v) for v in value]
    return value


def _block(key: str, value):
    # Terraform's plan holds a nested block as a list of objects.
    if isinstance(value, dict) and key not in _MAPS:
        return [_values(value, key)]
    return _values(value, key)


def _references(value, owners: dict[str, str]) -> list[str]:
    """Addresses of the resources whose id or ARN this input holds (Terraform's `references`)."""
    if isinstance(value, str):
        return [owners[value]] if value in owners else []
    if isinstance(value, dict):
        return [a for v in value.values() for a in _references(v, owners)]
    if isinstance(value, list):
        return [a for v in value for a in _references(v, owners)]
    return []


def terraform_plan(mocks: RecordingMocks) -> dict:
    resources, owners = [], {}
    for token, name, inputs in mocks.resources:
        tf_type = terraform_type(token)
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", name)
        address = f"{tf_type}.{safe}"
        kind = token.rsplit(":", 1)[-1]
        owners[f"{kind}/{name}-id"] = address
        owners[f"arn:aws:mock:::{kind}/{name}"] = address
        values = {_snake(k): _block(_snake(k), v) for k, v in inputs.items() if not k.startswith("__")}
        values.pop("arn", None)
        resources.append({"address": address, "mode": "managed", "type": tf_type, "name": safe,
                          "provider_name": "registry.terraform.io/hashicorp/aws", "values": values,
                          "_inputs": inputs})
    # Resources referenced by name (parameter and subnet groups): where the name is unique.
    names: dict[str, list[str]] = {}
    for r in resources:
        name = r["_inputs"].get("name")
        if isinstance(name, str):
            names.setdefault(name, []).append(r["address"])
    owners.update({name: addresses[0] for name, addresses in names.items() if len(addresses) == 1})
    configuration = []
    for r in resources:
        inputs = r.pop("_inputs")
        expressions = {}
        for key, value in inputs.items():
            refs = [a for a in _references(value, owners) if a != r["address"]]
            if refs:
                expressions[_snake(key)] = {"references": [f"{a}.id" for a in refs] + refs}
        configuration.append({"address": r["address"], "mode": "managed", "type": r["type"], "name": r["name"],
                              "provider_config_key": "aws", "expressions": expressions})
    return {
        "format_version": "1.2", "terraform_version": "1.9.0",
        "planned_values": {"root_module": {"resources": resources}},
        "resource_changes": [{"address": r["address"], "mode": "managed", "type": r["type"], "name": r["name"],
                              "provider_name": r["provider_name"],
                              "change": {"actions": ["create"], "before": None, "after": r["values"]}}
                             for r in resources],
        "configuration": {"provider_config": {"aws": {"name": "aws", "full_name": "registry.terraform.io/hashicorp/aws"}},
                          "root_module": {"resources": configuration}},
    }
