#!/usr/bin/python3
"""subject-filter: a Sinkline sink in Python. Bound to EOD before COMMIT with
read access, it refuses messages whose Subject matches a regular expression
(550 5.7.1) and lets the others go on.

    /usr/bin/python3 sinks/python/subject_filter.py --listen=127.0.0.1:7200 \
        --reject-subject='(?i)viagra|lottery'
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sinkline_sink  # noqa: E402

pattern = None


def add_flags(parser):
    parser.add_argument("--reject-subject", required=True,
                        help="regular expression matched against Subject")


def on_event(ctx):
    if ctx.event.type != sinkline_sink.EOD or ctx.content is None:
        return  # large messages are not inline: let them go on
    for name, value in ctx.headers():
        if name.lower() == "subject" and pattern.search(value):
            ctx.reject(550, "5.7.1", "Message refused by subject policy")
            return


if __name__ == "__main__":
    args = sinkline_sink.parse_args("subject-filter", add_flags)
    pattern = re.compile(args.reject_subject)
    sys.exit(sinkline_sink.serve(on_event, "subject-filter", args))
