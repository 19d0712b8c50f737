"""The serving pods' verify-model init container: the exact bytes vLLM is about to load must carry
their build signature and a promotion attestation for this model and version.

    python -m aiplat.security.verify_folder DIR --public-key PEM --approval-key PEM \\
        --model-name M --version V [--attestation-file F]

The attestation comes from `--attestation-file`, else the AIPLAT_ATTESTATION variable (the rendered
Deployment carries it inline: it is signed, so whoever can edit the manifest still cannot forge it).
Exit 0 and one line naming the approval; exit 1 and the reason otherwise, so the pod never reaches
its vLLM container. Imports only the verifier's few dependencies (deploy/images/verify-requirements.txt).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aiplat-verify-model", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--public-key", type=Path, required=True, help="build signature key (model.sig)")
    parser.add_argument("--approval-key", type=Path, required=True, help="promotion attestation key")
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--attestation-file", type=Path, default=None)
    args = parser.parse_args(argv)

    from aiplat.security.approval import ServingKeys, verify_for_serving
    from aiplat.security.signing import SignatureError

    from aiplat.config import pod_attestation

    attestation = args.attestation_file.read_text() if args.attestation_file else pod_attestation()
    try:
        approval = verify_for_serving(args.folder, attestation, ServingKeys(args.public_key, args.approval_key),
                                      model=args.model_name, version=args.version)
    except (SignatureError, OSError) as e:
        print(f"aiplat-verify-model: REFUSED {args.model_name} version {args.version} in {args.folder}: {e}",
              file=sys.stderr)
        return 1
    print(f"aiplat-verify-model: {approval.model} version {approval.version} verified: digest "
          f"{approval.model_digest[:12]}, eval report {approval.eval_report_sha256[:12]}, policy "
          f"{approval.policy_sha256[:12]}, approved by {approval.approver} ({approval.approver_team}) at "
          f"{approval.approved_at}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
