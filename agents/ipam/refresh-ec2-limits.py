#!/usr/bin/env python3
"""Regenerate agents/ipam/src/ec2_network_limits.csv.

The CSV backs `provider::kube::max_pods(instance_type, prefix_delegation)`.
Columns: instance_type,vcpus,max_enis,ipv4_per_eni,hypervisor,bare_metal

Inputs (any mix, several files allowed, later files win on duplicates):

  (a) Output of `aws ec2 describe-instance-types` -- the authoritative source.
      Either the CLI's auto-paginated single document or several pages
      (--no-paginate / --starting-token), each a JSON object with
      "InstanceTypes": [...]:

        aws ec2 describe-instance-types --region us-east-1 --output json > it.json
        python3 agents/ipam/refresh-ec2-limits.py it.json \\
            -o agents/ipam/src/ec2_network_limits.csv

  (b) moto's bundled DescribeInstanceTypes dump
      (moto/ec2/resources/instance_types.json[.gz], an object keyed by
      instance type). Pass its path, or `--moto` to locate it in the moto
      installed for the Python running this script:

        python3 -m venv /tmp/motovenv && /tmp/motovenv/bin/pip install moto
        /tmp/motovenv/bin/python agents/ipam/refresh-ec2-limits.py --moto \\
            -o agents/ipam/src/ec2_network_limits.csv

Files ending in .gz are decompressed; "-" reads standard input. Without -o
the CSV goes to standard output. Stdlib only.

max_enis is the ENI limit of the *default* network card
(NetworkCards[i].MaximumNetworkInterfaces where NetworkCardIndex ==
DefaultNetworkCardIndex), not NetworkInfo.MaximumNetworkInterfaces, which
sums all cards: pods only get addresses from ENIs on the default card, as in
the AWS VPC CNI and amazon-eks-ami's eni-max-pods.txt (p4d.24xlarge: 15, not
60). Records without NetworkCards fall back to the NetworkInfo total.
Types missing vCPU, ENI or IPv4 figures are skipped with a warning on stderr.
"""

import argparse
import csv
import gzip
import importlib.metadata
import importlib.util
import json
import os
import sys

HEADER = ["instance_type", "vcpus", "max_enis", "ipv4_per_eni", "hypervisor", "bare_metal"]


def load(path):
    """Return the list of instance-type records in one input file."""
    if path == "-":
        doc = json.load(sys.stdin)
    else:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            doc = json.load(f)
    if isinstance(doc, dict) and "InstanceTypes" in doc:  # AWS CLI page
        return doc["InstanceTypes"]
    if isinstance(doc, dict):  # moto: {"m5.large": {...}, ...}
        return [dict(v, InstanceType=v.get("InstanceType", k)) for k, v in doc.items()]
    if isinstance(doc, list):  # bare list of records
        return doc
    sys.exit(f"{path}: unrecognised JSON shape")


def moto_path():
    spec = importlib.util.find_spec("moto")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("--moto: moto is not installed for this Python (see docstring)")
    base = os.path.join(list(spec.submodule_search_locations)[0], "ec2", "resources")
    print(f"using moto {importlib.metadata.version('moto')}", file=sys.stderr)
    for name in ("instance_types.json", "instance_types.json.gz"):
        if os.path.exists(os.path.join(base, name)):
            return os.path.join(base, name)
    sys.exit(f"--moto: no instance_types.json[.gz] under {base}")


def default_card_enis(net):
    """ENIs usable on the default network card."""
    cards = net.get("NetworkCards")
    if not cards:
        return net.get("MaximumNetworkInterfaces")
    index = net.get("DefaultNetworkCardIndex", 0)
    for card in cards:
        if card.get("NetworkCardIndex", 0) == index:
            return card.get("MaximumNetworkInterfaces")
    return None


def row(rec):
    """CSV row for one record, or None if a required figure is missing."""
    net = rec.get("NetworkInfo", {})
    vcpus = rec.get("VCpuInfo", {}).get("DefaultVCpus")
    enis = default_card_enis(net)
    ipv4 = net.get("Ipv4AddressesPerInterface")
    if not all(isinstance(x, int) and x > 0 for x in (vcpus, enis, ipv4)):
        return None
    bare_metal = bool(rec.get("BareMetal", False))
    hypervisor = rec.get("Hypervisor", "")  # bare metal has none
    if not hypervisor and not bare_metal:
        print(f"warning: {rec['InstanceType']}: no Hypervisor, left empty", file=sys.stderr)
    return [rec["InstanceType"], vcpus, enis, ipv4, hypervisor, str(bare_metal).lower()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("inputs", nargs="*", help="describe-instance-types JSON pages or moto's instance_types.json[.gz]")
    ap.add_argument("--moto", action="store_true", help="also read the dump of the installed moto package")
    ap.add_argument("-o", "--output", help="CSV path (default: stdout)")
    args = ap.parse_args()
    paths = list(args.inputs) + ([moto_path()] if args.moto else [])
    if not paths:
        ap.error("give at least one input file or --moto")

    records = {}
    for path in paths:
        for rec in load(path):
            records[rec["InstanceType"]] = rec

    rows, skipped = [], []
    for name in sorted(records):
        r = row(records[name])
        if r:
            rows.append(r)
        else:
            skipped.append(name)
    for name in skipped:
        print(f"warning: {name}: missing vCPU/ENI/IPv4 figures, skipped", file=sys.stderr)
    print(f"{len(rows)} rows, {len(skipped)} skipped, from {', '.join(paths)}", file=sys.stderr)

    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    try:
        w = csv.writer(out, lineterminator="\n")
        w.writerow(HEADER)
        w.writerows(rows)
    finally:
        if args.output:
            out.close()


if __name__ == "__main__":
    main()
