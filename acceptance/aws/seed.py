"""Seed a fresh moto server with a realistic EKS setting; print what was created as one JSON object.

Usage: python seed.py --endpoint http://127.0.0.1:PORT [--region us-east-1] [--cluster trellis-local]

Run it once against an empty moto (names are fixed, a second run fails on duplicates).
The JSON on stdout is parsed by acceptance/src/seed.rs; keep the two in step.
Anything that goes wrong raises: the traceback on stderr is the error report.

moto gaps this seed lives with (also in README.md next to this file):
- No ENI/IP limits: moto attaches any number of ENIs and assigns any number of IPs per ENI, and
  lets a subnet go to a negative AvailableIpAddressCount. Nothing here depends on limits; tests
  that need them must enforce them outside moto (instance types do carry realistic NetworkInfo).
- Prefix delegation is ignored: Ipv4PrefixCount / Ipv4Prefixes return 200 and do nothing.
- IP choice is random across the whole CIDR (network/broadcast/reserved addresses included) and can
  repeat within one ENI or across ENIs. We never let moto pick secondary IPs here.
- Attached ENIs can be deleted (real EC2: InvalidNetworkInterface.InUse).
- EKS: the cluster is ACTIVE at once, and CreateCluster answers with a fake unreachable endpoint and a
  CA of 1400 random characters (not PEM). We record them as moto returned them. Once the local cloud
  has started the Kubernetes emulator, DescribeCluster answers with the emulator's URL and CA instead
  (moto_serve.py, see kubernetes_note). EKS also does not validate subnet ids and echoes
  resourcesVpcConfig without vpcId.
- RunInstances gives eth0 DeleteOnTermination=false (real launches default to true) and
  ModifyNetworkInterfaceAttribute cannot change it; TerminateInstances leaves the ENI in-use.
"""

import argparse
import json
import os
import sys

import boto3
from botocore.config import Config

VPC_CIDR = "10.0.0.0/16"
POD_CIDR = "100.64.0.0/16"
NODE_CIDRS = ["10.0.0.0/20", "10.0.16.0/20", "10.0.32.0/20"]
POD_CIDRS = ["100.64.0.0/18", "100.64.64.0/18", "100.64.128.0/18"]
# One node per AZ, deliberately of different sizes so max-pods maths sees 29, 58 and 17.
NODE_TYPES = ["m5.large", "m5.xlarge", "t3.medium"]
KUBERNETES_VERSION = "1.32"
# moto's built-in image named like the EKS-optimised AMI.
NODE_AMI_NAME = "amazon-eks-node-linux"

KUBERNETES_NOTE = (
    "endpoint and certificate_authority are what moto's CreateCluster returned: an unreachable hostname "
    "and a random non-PEM string. The API server is the Kubernetes emulator: once it is up, DescribeCluster "
    "answers with its URL and CA, and it takes EKS tokens, with creator_arn as the cluster's admin; "
    "local-cloud also writes a KUBECONFIG for it with a static token"
)


def tags(pairs):
    return [{"Key": k, "Value": v} for k, v in pairs.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--cluster", default="trellis-local")
    # More nodes round-robin over the AZs and instance types (benchmarks at scale).
    parser.add_argument("--nodes", type=int, default=len(NODE_TYPES))
    args = parser.parse_args()

    # moto accepts any credentials; set fake ones so a developer's real profile is never used.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    # moto answers unimplemented filters with HTTP 500, which botocore would retry; fail at once.
    config = Config(region_name=args.region, retries={"mode": "standard", "max_attempts": 1})

    def client(service):
        return boto3.client(service, endpoint_url=args.endpoint, config=config)

    ec2, eks, iam, sts = client("ec2"), client("eks"), client("iam"), client("sts")
    cluster = args.cluster
    cluster_tag = f"kubernetes.io/cluster/{cluster}"

    azs = [args.region + suffix for suffix in "abc"]
    offered = {z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]}
    missing = [az for az in azs if az not in offered]
    if missing:
        sys.exit(f"moto offers no AZ {missing} in {args.region} (it has {sorted(offered)})")

    vpc = ec2.create_vpc(
        CidrBlock=VPC_CIDR,
        TagSpecifications=[{"ResourceType": "vpc", "Tags": tags({"Name": cluster, cluster_tag: "shared"})}],
    )["Vpc"]
    vpc_id = vpc["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc_id, EnableDnsHostnames={"Value": True})
    # Custom networking: pods get addresses from a secondary CIDR outside the node range.
    ec2.associate_vpc_cidr_block(VpcId=vpc_id, CidrBlock=POD_CIDR)

    zones = []
    for az, node_cidr, pod_cidr in zip(azs, NODE_CIDRS, POD_CIDRS):
        node_subnet = ec2.create_subnet(
            VpcId=vpc_id,
            CidrBlock=node_cidr,
            AvailabilityZone=az,
            TagSpecifications=[
                {
                    "ResourceType": "subnet",
                    "Tags": tags(
                        {
                            "Name": f"{cluster}-nodes-{az}",
                            "kubernetes.io/role/internal-elb": "1",
                            cluster_tag: "shared",
                        }
                    ),
                }
            ],
        )["Subnet"]
        pod_subnet = ec2.create_subnet(
            VpcId=vpc_id,
            CidrBlock=pod_cidr,
            AvailabilityZone=az,
            TagSpecifications=[
                {
                    "ResourceType": "subnet",
                    "Tags": tags(
                        {
                            "Name": f"{cluster}-pods-{az}",
                            "trellis.io/pod-subnet": "true",
                            cluster_tag: "shared",
                        }
                    ),
                }
            ],
        )["Subnet"]
        zones.append(
            {
                "az": az,
                "node_subnet_id": node_subnet["SubnetId"],
                "node_cidr": node_cidr,
                "pod_subnet_id": pod_subnet["SubnetId"],
                "pod_cidr": pod_cidr,
            }
        )

    security_group_id = ec2.create_security_group(
        GroupName=f"{cluster}-nodes",
        Description=f"Nodes of EKS cluster {cluster}",
        VpcId=vpc_id,
        TagSpecifications=[
            {
                "ResourceType": "security-group",
                "Tags": tags({"Name": f"{cluster}-nodes", cluster_tag: "owned"}),
            }
        ],
    )["GroupId"]
    # Nodes and pods talk to each other freely, as in the EKS node group default.
    ec2.authorize_security_group_ingress(
        GroupId=security_group_id,
        IpPermissions=[{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": security_group_id}]}],
    )

    role_arn = iam.create_role(
        RoleName=f"{cluster}-cluster",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "eks.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
    )["Role"]["Arn"]
    created = eks.create_cluster(
        name=cluster,
        version=KUBERNETES_VERSION,
        roleArn=role_arn,
        resourcesVpcConfig={
            "subnetIds": [z["node_subnet_id"] for z in zones],
            "securityGroupIds": [security_group_id],
            "endpointPublicAccess": True,
            "endpointPrivateAccess": True,
        },
        kubernetesNetworkConfig={"serviceIpv4Cidr": "172.20.0.0/16"},
        tags={"Name": cluster},
    )["cluster"]

    # The add-ons an EKS cluster runs for networking and DNS, managed by EKS
    # (moto_serve.py serves them; moto has none).
    addons = ["vpc-cni", "kube-proxy", "coredns"]
    for addon in addons:
        eks.create_addon(clusterName=cluster, addonName=addon)

    images = ec2.describe_images(Filters=[{"Name": "name", "Values": [NODE_AMI_NAME]}])["Images"]
    if not images:
        sys.exit(f"moto has no image named {NODE_AMI_NAME}")
    ami_id = images[0]["ImageId"]

    instances = []
    placements = [(zones[i % len(zones)], NODE_TYPES[i % len(NODE_TYPES)]) for i in range(args.nodes)]
    for index, (zone, instance_type) in enumerate(placements, start=1):
        name = f"{cluster}-node-{index}"
        instance = ec2.run_instances(
            ImageId=ami_id,
            InstanceType=instance_type,
            MinCount=1,
            MaxCount=1,
            SubnetId=zone["node_subnet_id"],
            SecurityGroupIds=[security_group_id],
            TagSpecifications=[
                {
                    "ResourceType": "instance",
                    "Tags": tags({"Name": name, cluster_tag: "owned", "eks:cluster-name": cluster}),
                }
            ],
        )["Instances"][0]
        instances.append(
            {
                "id": instance["InstanceId"],
                "instance_type": instance["InstanceType"],
                "az": instance["Placement"]["AvailabilityZone"],
                "subnet_id": instance["SubnetId"],
                "private_ip": instance["PrivateIpAddress"],
                "primary_eni_id": instance["NetworkInterfaces"][0]["NetworkInterfaceId"],
                "name": name,
            }
        )

    json.dump(
        {
            "region": args.region,
            "cluster": {
                "name": created["name"],
                "arn": created["arn"],
                "version": created["version"],
                "status": created["status"],
                "role_arn": role_arn,
                # EKS makes whoever creates a cluster its admin.
                "creator_arn": sts.get_caller_identity()["Arn"],
                "endpoint": created["endpoint"],
                "certificate_authority": created["certificateAuthority"]["data"],
                "kubernetes_note": KUBERNETES_NOTE,
                "addons": addons,
            },
            "vpc_id": vpc_id,
            "vpc_cidr": VPC_CIDR,
            "pod_cidr": POD_CIDR,
            "azs": azs,
            "zones": zones,
            "security_group_id": security_group_id,
            "ami_id": ami_id,
            "instances": instances,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
