// The mailbox grammar every Sinkline part applies to an envelope address
// (RFC 5321 §4.1.2, RFC 6531 for UTF-8): the edge to what a client sends,
// the broker to every envelope edit a sink asks for, so that nothing that
// reaches the relay's MAIL FROM / RCPT TO lines was not checked.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace sinkline {

// A syntactically acceptable mailbox, at most 254 octets: local@domain
// where the local part is either a Quoted-string (RFC 5321 §4.1.2:
// "..." of printable ASCII and space, with quoted-pairs \x; UTF-8 too when
// `utf8`, RFC 6531) or, like the domain, printable ASCII (or well-formed
// UTF-8 when `utf8`) without spaces, controls or brackets.
bool ValidMailbox(absl::string_view address, bool utf8);

// The local part of a mailbox as written (quotes and quoted-pairs kept):
// up to the '@' after the closing quote of a Quoted-string, else up to the
// last '@'; the whole address when it has no '@' ("postmaster").
absl::string_view MailboxLocalPart(absl::string_view address);

// A local part with its quotes and quoted-pairs taken away ("a\"b" is
// a"b); a Dot-string is returned as it is.
std::string UnquoteLocalPart(absl::string_view local);

// Sender-specified routing (Postfix's allow_untrusted_routing): the local
// part, unquoted, holds '%' (user%host@relay), '!' (host!user@relay) or
// '@' ("user@host"@relay, user@host@relay).
bool HasSourceRouting(absl::string_view address);

// Well-formed UTF-8 (no overlong forms, no surrogates).
bool ValidUtf8(absl::string_view text);

// `text` with every octet that is not part of well-formed UTF-8 replaced by
// U+FFFD, for a protobuf string field (valid UTF-8 comes back unchanged).
std::string ToValidUtf8(absl::string_view text);

// An address an envelope edit sets, adds or removes: a valid mailbox, or
// the null reverse-path "" where `null_allowed` (a new sender). Anything
// else is INVALID_ARGUMENT with the address escaped in the message.
absl::Status ValidateEnvelopeAddress(absl::string_view address,
                                     bool null_allowed, bool utf8);

// An ESMTP parameter as MAIL or RCPT carries it (RFC 5321 §4.1.2):
// keyword of letters, digits and '-'; value of printable ASCII without
// '=' or space (UTF-8 too when `utf8`).
absl::Status ValidateEsmtpParam(absl::string_view key, absl::string_view value,
                                bool utf8);

}  // namespace sinkline
