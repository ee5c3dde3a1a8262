"""Where a node may write in the artifacts bucket: PREFIX/USERID/... for each prefix of
naming.NODE_WRITE_PREFIXES, USERID being the IAM user ID of the request, which for an instance role is
ROLE-ID:INSTANCE-ID.

The node roles (stacks/components/node_role.py) grant s3:PutObject only on PREFIX/${aws:userid}/*. IAM substitutes
the policy variable from the request context at evaluation time; the IAM User Guide, "Request information that you
can use for policy variables" (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html
#policy-vars-infotouse), gives aws:userid for each kind of principal in its principal table, whose notes say
"*ec2-instance-id* is a value assigned to the instance when it is launched" next to "*role-id* is a unique identifier
assigned to each role at creation" (awsdocs/iam-user-guide@e2b8637a doc_source/reference_policies_variables.md
line 274 ff.; the table row itself, "Role assigned to an Amazon EC2 instance: role-id:ec2-instance-id", is on the live
page). A node does not assume the format: it asks STS GetCallerIdentity, whose UserId is "those listed in the
aws:userid column in the Principal table" and which needs no permission
(https://docs.aws.amazon.com/STS/latest/APIReference/API_GetCallerIdentity.html), and refuses to write when the answer
is not ROLE-ID:ITS-OWN-INSTANCE-ID (userdata/lib/scope.sh). Role IDs start with AROA
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_identifiers.html#identifiers-prefixes).

Whoever reads these keys back (dictl) takes the writer from the key: the instance that wrote it, and whether its role
is the deployment's node role. A key in another instance's folder is that instance's, never the one asked about.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

# The IAM policy variable, literally as it must reach the policy document.
USERID_VARIABLE = "${aws:userid}"
_USERID = re.compile(r"^(AROA[A-Z0-9]{12,}):(i-[0-9a-f]{8,17})$")


@dataclass(frozen=True)
class Writer:
    """The instance a key names as its writer, and the ID of the role it wrote with."""

    role_id: str
    instance_id: str

    @property
    def userid(self) -> str:
        return f"{self.role_id}:{self.instance_id}"


def parse_userid(segment: str) -> Writer | None:
    """ROLE-ID:INSTANCE-ID as a key segment, or None if it is not one."""
    match = _USERID.match(segment)
    return Writer(match.group(1), match.group(2)) if match else None


def scoped(prefix: str, writer: Writer) -> str:
    """The folder under PREFIX that WRITER alone may write: PREFIX + ROLE-ID:INSTANCE-ID + '/'."""
    return f"{prefix}{writer.userid}/"


def split_key(prefix: str, key: str) -> tuple[Writer | None, str]:
    """A key under PREFIX as (its writer, the rest after the writer's folder); (None, rest) if the first segment
    is not a user ID (written before this layout, or by someone else)."""
    first, _, rest = key[len(prefix):].partition("/")
    return parse_userid(first), rest


def trusted(writer: Writer | None, role_ids: Iterable[str]) -> bool:
    """Whether a writer's role is one of the deployment's node roles (role_ids empty: the stack names none, so any
    well-formed writer is accepted and only the instance ID is checked)."""
    if writer is None:
        return False
    known = set(role_ids)
    return not known or writer.role_id in known
