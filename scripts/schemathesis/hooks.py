"""Strategies for the formats outdial's OpenAPI document names but a JSON Schema cannot spell out.

`e164`: a number valid for its country's numbering plan (libphonenumber's rules), not just
`+` and digits. `webhook-url`: a URL the node may deliver to; the suite's node runs with
OUTDIAL_WEBHOOK_ALLOW_PRIVATE=true, so loopback URLs qualify (a schema cannot resolve names).
"""

import schemathesis
from hypothesis import strategies as st

# Valid numbers of several plans: Indian landline and mobile, US, UK, Singapore, UAE.
NUMBERS = [
    "+918035739222",
    "+919876543210",
    "+912240001234",
    "+14155550123",
    "+12025550143",
    "+442079460958",
    "+447911123456",
    "+6561234567",
    "+971501234567",
]

schemathesis.openapi.format("e164", st.sampled_from(NUMBERS))
schemathesis.openapi.format(
    "webhook-url",
    st.builds(
        "http://127.0.0.1:{}/{}".format,
        st.integers(min_value=1, max_value=65535),
        st.from_regex(r"\A[a-z0-9]{0,16}\Z"),
    ),
)
