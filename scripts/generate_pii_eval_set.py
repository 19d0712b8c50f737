"""Write a labeled PII evaluation set made by presidio-evaluator, from ITS templates and fake data.

Runs in the separate environment built by scripts/setup_pii_eval_env.sh (presidio-evaluator needs
pandas>=3, the platform pins pandas<3), and imports nothing from the platform: the team wrote
neither the sentences nor the values. The platform's venv scores the file (`aiplat pii evaluate`).

    <state>/venvs/pii-eval/bin/python scripts/generate_pii_eval_set.py --out FILE [--size 2000] [--seed 42]

One JSON object per line: {"text", "template_id", "spans": [{"entity", "start", "end", "value"}]}.
Entity names are presidio-evaluator's own (STREET_ADDRESS, GPE, ...); the scorer maps them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--lower-case-ratio", type=float, default=0.05,
                        help="share of names written in lower case (presidio-evaluator's documented default)")
    args = parser.parse_args()

    # Quiet tqdm and the generator's prints on stdout: the file is the output.
    sys.stdout = sys.stderr
    from importlib.metadata import version

    from presidio_evaluator.data_generator import PresidioSentenceFaker
    from presidio_evaluator.data_generator.presidio_sentence_faker import presidio_templates_file_path

    # The package's templates write line breaks as the two characters "\n" (postal blocks,
    # signatures); real text has real line breaks. Nothing else of the templates changes.
    templates = [line.strip().replace("\\n", "\n")
                 for line in presidio_templates_file_path.read_text().splitlines() if line.strip()]
    random.seed(args.seed)
    faker = PresidioSentenceFaker(locale="en_US", lower_case_ratio=args.lower_case_ratio, random_seed=args.seed,
                                  sentence_templates=templates)
    samples = faker.generate_new_fake_sentences(num_samples=args.size)
    tmp = f"{args.out}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for s in samples:
            spans = [{"entity": sp.entity_type, "start": sp.start_position, "end": sp.end_position,
                      "value": sp.entity_value} for sp in s.spans]
            for sp in spans:  # the file must be self-consistent: the scorer trusts these offsets
                in_text = s.full_text[sp["start"]:sp["end"]]
                # presidio-evaluator 0.3.2 lower-cases some span values but not the text (its
                # lower_case_ratio): the text is what gets scanned, so its characters are the label.
                if in_text.casefold() != sp["value"].casefold():
                    raise SystemExit(f"sample {s.template_id}: span {sp} does not match its text")
                sp["value"] = in_text
            fh.write(json.dumps({"text": s.full_text, "template_id": s.template_id, "spans": spans},
                                ensure_ascii=False) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {len(samples)} samples to {args.out} (presidio-evaluator {version('presidio-evaluator')}, "
          f"seed {args.seed})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
