"""The tables, as SQLAlchemy Core. Migrations in `store/migrations` create them; this module is
the single description the code queries against (SQLite and PostgreSQL alike).

Imported rows carry `digest` (hash of the source fields) and `source_stamp` (the extract's
timestamp, AAAAMMJJhhmm): re-importing a file changes nothing, a newer file updates what
differs and retires what it no longer lists. Rows are retired, not deleted: mail and audit
rows keep pointing at them.
"""
from __future__ import annotations

from sqlalchemy import (BigInteger, Boolean, Column, Date, DateTime, ForeignKey, Index, Integer, LargeBinary, MetaData,
                        String, Table, Text, UniqueConstraint)

metadata = MetaData(naming_convention={
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid; BIGINT on PostgreSQL.
BigId = BigInteger().with_variant(Integer(), "sqlite")
# Folded search columns are compared by prefix ranges (col >= 'dup' AND col < 'duq'). That needs a
# byte order: under a linguistic PostgreSQL collation (fr_FR, en_US) spaces and punctuation are
# ignored at first level, so "du pont" would fall inside the "dup" range. SQLite's default
# BINARY collation already is a byte order.
SearchText = Text().with_variant(Text(collation="C"), "postgresql")


def _tracking() -> list[Column]:
    """Columns every imported entry has."""
    return [
        Column("digest", String(40), nullable=False, default=""),
        Column("source_stamp", String(12), nullable=False, default=""),  # "" = created locally
        Column("retired_at", DateTime(timezone=True)),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    ]


organisations = Table(
    "organisations", metadata,
    # "3"+FINESS, "5"+SIRET, or "R"+technical id when the extract gives nothing else
    Column("id", String(24), primary_key=True),
    Column("finess", String(9), index=True),
    Column("siret", String(14), index=True),
    Column("name", Text, nullable=False),
    Column("trade_name", Text, nullable=False, default=""),
    Column("kind", String(16), nullable=False, default="other"),  # hospital, ehpad, dac, cpts, lab, cabinet, other
    Column("sector_code", String(8), nullable=False, default=""),
    Column("sector_label", Text, nullable=False, default=""),
    Column("street", Text, nullable=False, default=""),
    Column("postal_code", String(10), nullable=False, default=""),
    Column("city", Text, nullable=False, default=""),
    Column("department", String(3), nullable=False, default=""),
    Column("country", Text, nullable=False, default=""),
    Column("search_text", SearchText, nullable=False, default=""),  # folded name + city, for search
    Column("city_search", SearchText, nullable=False, default=""),  # folded city, for search
    *_tracking(),
)
Index("ix_organisations_search", organisations.c.search_text, organisations.c.id)
Index("ix_organisations_city_search", organisations.c.city_search)

professionals = Table(
    "professionals", metadata,
    Column("idnat", String(24), primary_key=True),  # "8"+RPPS or "0"+ADELI, as in tokens and certificates
    Column("rpps", String(11), unique=True),
    Column("civility", Text, nullable=False, default=""),  # Monsieur, Madame
    Column("practice_civility", Text, nullable=False, default=""),  # Docteur, Professeur
    Column("family_name", Text, nullable=False),
    Column("given_name", Text, nullable=False, default=""),
    Column("profession_code", String(4), nullable=False, default=""),
    Column("profession_label", Text, nullable=False, default=""),
    Column("specialty_code", String(8), nullable=False, default=""),
    Column("specialty_label", Text, nullable=False, default=""),
    Column("search_text", SearchText, nullable=False, default=""),  # folded "family given", for search
    *_tracking(),
)
# Name-prefix search walks these in result order (idnat breaks ties, so pages are stable).
Index("ix_professionals_search", professionals.c.search_text, professionals.c.idnat)
Index("ix_professionals_profession_search", professionals.c.profession_code, professionals.c.search_text,
      professionals.c.idnat)

activities = Table(
    "activities", metadata,
    Column("key", String(40), primary_key=True),  # digest of the activity's fields
    Column("idnat", String(24), ForeignKey("professionals.idnat"), nullable=False, index=True),
    Column("organisation_id", String(24), ForeignKey("organisations.id"), index=True),
    Column("mode_code", String(4), nullable=False, default=""),
    Column("mode_label", Text, nullable=False, default=""),
    Column("city", Text, nullable=False, default=""),
    Column("postal_code", String(10), nullable=False, default=""),
    Column("city_search", SearchText, nullable=False, default=""),  # folded city, for search
    Column("source_stamp", String(12), nullable=False, default=""),
    Column("retired_at", DateTime(timezone=True)),
)
Index("ix_activities_city_search", activities.c.city_search)

mailboxes = Table(
    "mailboxes", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("address", String(320), nullable=False, unique=True),  # lower case; never changes
    Column("kind", String(16), nullable=False),  # nominative, organisational, applicative, cabinet
    Column("owner_idnat", String(24), ForeignKey("professionals.idnat"), index=True),
    Column("organisation_id", String(24), ForeignKey("organisations.id"), index=True),
    Column("service", Text, nullable=False, default=""),
    Column("description", Text, nullable=False, default=""),
    Column("published", Boolean, nullable=False, default=True),  # False: liste rouge
    Column("local", Boolean, nullable=False, default=False),  # hosted by this operator
    Column("created_at", DateTime(timezone=True), nullable=False),
    # The highest IMAP UIDVALIDITY handed out (or retired) in this box: a folder created after one of
    # the same name was deleted or renamed away gets a greater one, though the old row is gone.
    Column("last_uidvalidity", BigInteger, nullable=False, default=0),
    *_tracking(),
)

mailbox_delegates = Table(
    "mailbox_delegates", metadata,
    Column("mailbox_id", BigId, ForeignKey("mailboxes.id"), primary_key=True),
    Column("idnat", String(24), ForeignKey("professionals.idnat"), primary_key=True),
    Column("granted_at", DateTime(timezone=True), nullable=False),
    Column("granted_by", String(64), nullable=False),
)

bus_events = Table(
    "bus_events", metadata,  # events other processes must hear at once (the CLI's changes): store/relay.py
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("channel", String(340), nullable=False),
    Column("event", Text, nullable=False),  # JSON
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
)

imports = Table(
    "imports", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("kind", String(8), nullable=False),  # ps (activities) or mss (mailboxes)
    Column("file_name", Text, nullable=False),
    Column("stamp", String(12), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("lines", Integer, nullable=False, default=0),
    Column("accepted", Integer, nullable=False, default=0),
    Column("rejected", Integer, nullable=False, default=0),
    Column("retired", Integer, nullable=False, default=0),
    UniqueConstraint("kind", "sha256", name="uq_imports_kind_sha256"),
)

audit = Table(
    "audit", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("actor", String(320), nullable=False),  # national identifier, mailbox of an application, or "-"
    Column("actor_kind", String(16), nullable=False),  # person, application, operator, anonymous
    Column("source", String(64), nullable=False, default=""),  # remote address, or "cli"
    Column("action", String(64), nullable=False),  # e.g. auth.token, directory.search, mailbox.grant
    Column("target", String(320), nullable=False, default=""),
    Column("outcome", String(16), nullable=False),  # ok, denied, failed, error
    Column("detail", Text, nullable=False, default=""),  # JSON, never message content
)
Index("ix_audit_actor", audit.c.actor, audit.c.at)

# --- mail ------------------------------------------------------------------------------------

trusted_domains = Table(
    "trusted_domains", metadata,  # the trust space (national white list), A-label form
    Column("domain", String(253), primary_key=True),
    Column("added_at", DateTime(timezone=True), nullable=False),
)

trusted_operators = Table(
    "trusted_operators", metadata,  # a domain's DNCertificatOperateur values, as the list writes them
    Column("domain", String(253), primary_key=True),
    Column("dn", String(1024), primary_key=True),
    Column("added_at", DateTime(timezone=True), nullable=False),
)

app_passwords = Table(
    "app_passwords", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("mailbox_id", BigId, ForeignKey("mailboxes.id"), nullable=False),
    Column("idnat", String(24), ForeignKey("professionals.idnat"), nullable=False, index=True),
    Column("label", String(80), nullable=False),
    Column("selector", String(8), nullable=False, unique=True),  # public part: finds the one hash to check
    Column("salt", LargeBinary(16), nullable=False),
    Column("hash", LargeBinary(32), nullable=False),  # scrypt
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True)),
    UniqueConstraint("mailbox_id", "idnat", "label", name="uq_app_passwords_label"),
)

bodies = Table(
    "bodies", metadata,  # one row per message however many folders hold it
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("size", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),  # the bytes as delivered, our Received: first
    Column("created_at", DateTime(timezone=True), nullable=False),
)

message_facts = Table(
    "message_facts", metadata,  # what IMAP answers without the body, learnt when it is stored
    Column("body_id", BigId, ForeignKey("bodies.id"), primary_key=True),
    # SEARCH SUBJECT in SQL: the decoded Subject values, casefolded, one a line; NULL without one
    Column("search_subject", Text),
    Column("fields", Text, nullable=False),  # JSON: decoded header values, addresses, sent date (mailserver/bodies.py)
    Column("envelope", LargeBinary, nullable=False),  # FETCH ENVELOPE, as sent
    Column("body", LargeBinary, nullable=False),  # FETCH BODY
    Column("bodystructure", LargeBinary, nullable=False),  # FETCH BODYSTRUCTURE
    Column("header", LargeBinary, nullable=False),  # the top-level header: BODY[HEADER…], other header SEARCH
)

folders = Table(
    "folders", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("mailbox_id", BigId, ForeignKey("mailboxes.id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("special_use", String(16), nullable=False, default=""),  # RFC 6154
    Column("uidvalidity", BigInteger, nullable=False),
    Column("uidnext", BigInteger, nullable=False),
    Column("highestmodseq", BigInteger, nullable=False),  # RFC 7162
    Column("created_at", DateTime(timezone=True), nullable=False),
    # UIDs from here on are \Recent (RFC 3501 §2.3.2) for the next session that SELECTs the folder
    Column("first_recent_uid", BigInteger, nullable=False, default=1),
    # every keyword ever set here, space-separated: FLAGS lists them all (RFC 3501 §7.2.6)
    Column("keywords", Text, nullable=False, default=""),
    # its messages and their octets, moved by every write that adds or removes one (delivery,
    # APPEND, COPY, MOVE, EXPUNGE, RENAME INBOX): the quota check and STATUS SIZE read these
    # instead of summing the messages, a cost that grew with the box (migration 0019)
    Column("messages", BigInteger, nullable=False, server_default="0"),
    Column("octets", BigInteger, nullable=False, server_default="0"),
    UniqueConstraint("mailbox_id", "name", name="uq_folders_mailbox_name"),
)

folder_messages = Table(
    "folder_messages", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("folder_id", BigId, ForeignKey("folders.id"), nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("body_id", BigId, ForeignKey("bodies.id"), nullable=False, index=True),
    Column("flags", Text, nullable=False, default=""),  # space-separated
    Column("internaldate", DateTime(timezone=True), nullable=False),
    Column("modseq", BigInteger, nullable=False),
    # the body's octets (RFC822.SIZE), here so that SELECT's view reads these narrow rows (from
    # ix_folder_messages_flags) and not the bodies' (10 KB each)
    Column("size", Integer, nullable=False, server_default="0"),
    UniqueConstraint("folder_id", "uid", name="uq_folder_messages_uid"),
)
Index("ix_folder_messages_modseq", folder_messages.c.folder_id, folder_messages.c.modseq)  # CONDSTORE changes
# SELECT's view (UIDs, MODSEQs and sizes by flag list) from this index alone, its groups in order
Index("ix_folder_messages_flags", folder_messages.c.folder_id, folder_messages.c.flags, folder_messages.c.uid,
      folder_messages.c.modseq, folder_messages.c.size)

folder_vanished = Table(
    "folder_vanished", metadata,  # expunged UIDs, for QRESYNC's VANISHED (RFC 7162 §3.2.5)
    Column("folder_id", BigId, ForeignKey("folders.id"), primary_key=True),
    Column("uid", BigInteger, primary_key=True),
    Column("modseq", BigInteger, nullable=False),  # of the expunge
)
Index("ix_folder_vanished_modseq", folder_vanished.c.folder_id, folder_vanished.c.modseq)

folder_subscriptions = Table(
    "folder_subscriptions", metadata,  # IMAP SUBSCRIBE/LSUB, per person (or application) per box
    Column("mailbox_id", BigId, ForeignKey("mailboxes.id"), primary_key=True),
    Column("who", String(320), primary_key=True),  # national identifier, or the application's id
    Column("name", Text, primary_key=True),  # need not exist (RFC 3501 §6.3.6)
)

mailbox_acl = Table(
    "mailbox_acl", metadata,  # RFC 4314 rights on organisational boxes
    Column("mailbox_id", BigId, ForeignKey("mailboxes.id"), primary_key=True),
    Column("identifier", String(64), primary_key=True),  # national identifier
    Column("rights", String(32), nullable=False),  # RFC 4314 §2.1 letters, sorted
)

envelopes = Table(
    "envelopes", metadata,  # one accepted SMTP transaction
    Column("id", BigId, primary_key=True, autoincrement=True),
    # NULL once IMAP expunged the last copy and no queued delivery needed the body
    Column("body_id", BigId, ForeignKey("bodies.id"), index=True),
    Column("message_id", Text, nullable=False, default=""),
    Column("sender", String(320), nullable=False),
    Column("actor", String(320), nullable=False),
    Column("actor_kind", String(16), nullable=False),
    Column("source", String(64), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("ret", String(4), nullable=False, default=""),  # DSN RET (RFC 3461 §4.3)
    Column("envid", Text, nullable=False, default=""),  # DSN ENVID, decoded
    Column("size", Integer, nullable=False),
)

deliveries = Table(
    "deliveries", metadata,  # one per recipient; `queued` rows are the outbound queue
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("envelope_id", BigId, ForeignKey("envelopes.id"), nullable=False, index=True),
    Column("recipient", String(320), nullable=False),
    Column("orcpt", Text, nullable=False, default=""),  # "type;address", decoded
    Column("notify", String(32), nullable=False, default=""),
    Column("status", String(16), nullable=False),  # delivered, queued, failed, relayed, withdrawn (hospital/cancels.py)
    Column("folder_message_id", BigId, ForeignKey("folder_messages.id")),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("last_error", Text, nullable=False, default=""),
    Column("delay_reported", Boolean, nullable=False, default=False),  # DSN NOTIFY=DELAY sent once
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("leased_by", String(64)),  # the process delivering it now (store/lease.py)
    Column("lease_until", DateTime(timezone=True)),  # then any node may take it over
)
Index("ix_deliveries_queue", deliveries.c.status, deliveries.c.next_attempt_at)

# --- instant ---------------------------------------------------------------------------------
# Care circles (cercles de soins): the professionals around one patient, their messages and
# read markers, and the alerts the server raises for people (new mail, circle changes).

circles = Table(
    "circles", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("patient_ins", String(15), nullable=False, unique=True),  # INS matricule (NIR or NIA), one circle each
    Column("patient_ins_oid", String(32), nullable=False),  # the INS register: NIR, NIA, or their test/demo OIDs
    Column("patient_family_name", Text, nullable=False),
    Column("patient_given_name", Text, nullable=False),
    Column("patient_birth_date", Date, nullable=False),
    Column("coordinator", String(24), ForeignKey("professionals.idnat"), nullable=False, index=True),
    Column("last_seq", BigInteger, nullable=False, default=0),  # bumped by the transaction storing a message
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

circle_members = Table(
    "circle_members", metadata,  # current members only; who joined and left when is in the audit trail
    Column("circle_id", BigId, ForeignKey("circles.id"), primary_key=True),
    Column("idnat", String(24), ForeignKey("professionals.idnat"), primary_key=True, index=True),
    Column("on_behalf_of", String(320), nullable=False, default=""),  # organisational box the delegate represents
    Column("added_at", DateTime(timezone=True), nullable=False),
    Column("added_by", String(64), nullable=False),
)

circle_messages = Table(
    "circle_messages", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("circle_id", BigId, ForeignKey("circles.id"), nullable=False),
    Column("seq", BigInteger, nullable=False),  # 1, 2, 3… per circle, without holes
    Column("author", String(24), ForeignKey("professionals.idnat")),  # NULL for an event: `data` names its source
    Column("client_id", String(64), nullable=False),  # the posting client's id: a retry stores nothing twice
    Column("text", Text, nullable=False),
    Column("reply_to", BigInteger),  # the seq of the message this one quotes, in the same circle
    Column("kind", String(8), nullable=False, server_default="text"),  # text (a member's post), event (a hospital's)
    Column("data", Text),  # JSON, for an event: {"author": {id, name}, "event": {id, kind, unit, occurred…}}
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("circle_id", "seq", name="uq_circle_messages_seq"),
    UniqueConstraint("circle_id", "author", "client_id", name="uq_circle_messages_client_id"),
)

attachment_contents = Table(
    "attachment_contents", metadata,  # a document's bytes, once however many circles hold it
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("sha256", String(64), nullable=False, unique=True),  # hex digest: the same bytes, the same row
    Column("size", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

circle_attachments = Table(
    "circle_attachments", metadata,  # a document uploaded to a circle: who, when, under what name
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("circle_id", BigId, ForeignKey("circles.id"), nullable=False, index=True),
    Column("content_id", BigId, ForeignKey("attachment_contents.id"), nullable=False, index=True),
    Column("name", String(255), nullable=False),  # the file name as shown, cleaned of paths and controls
    Column("content_type", String(64), nullable=False),  # from the bytes (instant/filetypes.py), never the client
    Column("size", BigInteger, nullable=False),
    Column("uploader", String(24), ForeignKey("professionals.idnat"), nullable=False),
    Column("seq", BigInteger),  # the message that carries it, once posted; NULL until then
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_circle_attachments_message", "circle_id", "seq"),
)

read_markers = Table(
    "read_markers", metadata,
    Column("circle_id", BigId, ForeignKey("circles.id"), primary_key=True),
    Column("idnat", String(24), ForeignKey("professionals.idnat"), primary_key=True),
    Column("seq", BigInteger, nullable=False),  # read up to and including this message
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

alerts = Table(
    "alerts", metadata,  # kept until acknowledged, and after, with who acknowledged and when
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("audience", String(330), nullable=False),  # "person:<idnat>", or "mailbox:<address>" (its readers)
    Column("kind", String(16), nullable=False),  # mail, circle (hospital events later)
    Column("key", String(160)),  # the source event's id: a replayed event raises no second alert
    Column("title", Text, nullable=False),
    Column("data", Text, nullable=False, default=""),  # JSON, for the client to link to the source
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("acknowledged_by", String(24)),
    Column("acknowledged_at", DateTime(timezone=True)),
    UniqueConstraint("audience", "key", name="uq_alerts_audience_key"),
)
Index("ix_alerts_pending", alerts.c.audience, alerts.c.acknowledged_at)

# --- hospital feed ---------------------------------------------------------------------------
# HL7 v2 messages from hospitals' record systems (hospital/), what they mean, and who was told.

hl7_messages = Table(
    "hl7_messages", metadata,  # one per (sender, MSH-10): a resend finds its row and gets the same ACK
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("sender", String(320), nullable=False),  # the applicative box whose certificate sent it
    Column("control_id", String(199), nullable=False),  # MSH-10 (ST, 199 characters in v2.5)
    Column("message_type", String(16), nullable=False),  # MSH-9, e.g. ADT^A01
    Column("ack_code", String(2), nullable=False),  # MSA-1 answered: AA
    Column("ack", Text, nullable=False),  # the ACK as sent, byte for byte on a resend
    Column("size", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),  # the message: a document event builds its mail from it
    Column("received_at", DateTime(timezone=True), nullable=False, index=True),
    Column("purged_at", DateTime(timezone=True)),  # `data` cut to its MSH segment ([hl7] raw_retention_days)
    UniqueConstraint("sender", "control_id", name="uq_hl7_messages_control_id"),
)

hospital_events = Table(
    "hospital_events", metadata,  # what a message means for the care team; `pending` rows are the dispatch job
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("message_id", BigId, ForeignKey("hl7_messages.id"), nullable=False, index=True),
    Column("organisation_id", String(24), nullable=False),  # the hospital (organisations.id)
    Column("kind", String(8), nullable=False),  # ADM, URG, SOR, DOC, UPD, ANN (hospital/message.py)
    Column("trigger", String(8), nullable=False),  # A01, A04, A03, A11, A08, T02…
    Column("patient_ins", String(15), nullable=False, default="", index=True),  # "" when PID-3 has none
    Column("patient", Text, nullable=False),  # JSON: names, birth date, INS OID, local id
    Column("gp_rpps", String(11), nullable=False, default=""),
    Column("unit", Text, nullable=False, default=""),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False),  # pending, dispatched, recorded, cancelled
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("dispatched_at", DateTime(timezone=True)),
    Column("movement_id", String(64), nullable=False, server_default=""),  # ZBE-1: what a cancellation names
    Column("cancelled_by", BigId),  # the A11/A13 (or ZBE-4 CANCEL) event that cancelled this one
    Column("leased_by", String(64)),  # the process dispatching it now (store/lease.py)
    Column("lease_until", DateTime(timezone=True)),  # then any node may take it over
)
Index("ix_hospital_events_status", hospital_events.c.status, hospital_events.c.id)
Index("ix_hospital_events_movement", hospital_events.c.organisation_id, hospital_events.c.movement_id)

hospital_notices = Table(
    "hospital_notices", metadata,  # who was told of an event, or why nobody was
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("event_id", BigId, ForeignKey("hospital_events.id"), nullable=False, index=True),
    Column("recipient", String(320), nullable=False, default=""),  # the box written to; "" when not notified
    Column("role", String(16), nullable=False),  # gp, gp_structure
    Column("status", String(16), nullable=False),  # delivered, queued, failed, not_notified
    Column("reason", Text, nullable=False, default=""),  # why not notified (said to coordinators)
    Column("envelope_id", BigId, ForeignKey("envelopes.id"), index=True),  # receipts find their notice by it
    Column("created_at", DateTime(timezone=True), nullable=False),
)

hospital_notice_history = Table(
    "hospital_notice_history", metadata,  # a notification's receipts, one row per fact (hospital/receipts.py)
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("notice_id", BigId, ForeignKey("hospital_notices.id"), nullable=False, index=True),
    Column("status", String(16), nullable=False),  # queued, sent, delivered, read, failed, withdrawn
    Column("reason", Text, nullable=False, default=""),  # why it failed
    Column("at", DateTime(timezone=True), nullable=False),
)

hospital_subscriptions = Table(
    "hospital_subscriptions", metadata,  # who else must know of a patient's events (hospital/subscriptions.py)
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("subscriber", String(330), nullable=False),  # "person:<idnat>" or "mailbox:<address>", as alerts' audience
    Column("patient_ins", String(15), nullable=False, index=True),
    Column("kinds", String(32), nullable=False),  # space-separated event kinds: ADM URG SOR DOC
    Column("medium", String(8), nullable=False),  # mail, alert, both; none: a circle member's opt-out
    Column("valid_from", DateTime(timezone=True), nullable=False),
    Column("valid_until", DateTime(timezone=True)),  # None: until removed
    Column("created_by", String(24), nullable=False),  # the entitled professional it stands on
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("subscriber", "patient_ins", name="uq_hospital_subscriptions_subscriber"),
)

mail_documents = Table(
    "mail_documents", metadata,  # delivered mail carrying an IHE_XDM.ZIP; `pending` rows are a job (hospital/incoming.py)
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("envelope_id", BigId, ForeignKey("envelopes.id"), nullable=False, unique=True),
    Column("status", String(16), nullable=False),  # pending, recorded, refused (unreadable: `reason` says why)
    Column("reason", Text, nullable=False, default=""),
    Column("patient_ins", String(15), nullable=False, default="", index=True),
    Column("type_code", String(64), nullable=False, default=""),  # LOINC, from METADATA.XML
    Column("data", Text),  # JSON: what METADATA.XML said (documents: type, author, dates, unique id)
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("done_at", DateTime(timezone=True)),
)
Index("ix_mail_documents_status", mail_documents.c.status, mail_documents.c.id)
