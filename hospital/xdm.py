"""IHE_XDM.ZIP for a document event: the national way to carry a document in a mail.

IHE ITI TF-1 §16 (XDM) and the ANS "Échange de documents de santé" guide: the archive holds
`IHE_XDM/SUBSET01/` with the document and METADATA.XML (an ebRS SubmitObjectsRequest: one
XDSDocumentEntry and its XDSSubmissionSet, carrying the patient's INS, the document's type
code, author, dates and hash), plus INDEX.HTM and README.TXT at the root. A receiving
system files the document under the right patient from METADATA.XML alone.
"""
from __future__ import annotations

import hashlib
import io
import zipfile
from datetime import datetime, timezone
from xml.sax.saxutils import escape, quoteattr

from .message import Document

XDS_DOC_ENTRY = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"  # ITI TF-3 §4.2.5: object types and classifications
XDS_SUBMISSION_SET = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
XDS_TYPE_CODE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
XDS_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
XDS_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
XDS_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
SUBSET_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SUBSET_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
EXTENSIONS = {"application/pdf": "PDF", "text/xml": "XML"}


def build(document: Document, *, ins: str, ins_oid: str, author: str, hospital: str, submitted_at: datetime,
          set_id: str) -> bytes:
    """The IHE_XDM.ZIP bytes; `set_id` a unique OID-like id for the submission set."""
    name = f"DOC0001.{EXTENSIONS[document.media_type]}"
    patient = f"{ins}^^^&{ins_oid}&ISO^NH"
    stamp = submitted_at.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S")
    metadata = _metadata(document, name, patient, author, stamp, set_id)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("IHE_XDM/SUBSET01/METADATA.XML", metadata)
        archive.writestr(f"IHE_XDM/SUBSET01/{name}", document.data)
        archive.writestr("INDEX.HTM", _index(document, name, hospital))
        archive.writestr("README.TXT", f"IHE XDM archive written by msante for {hospital}.\r\n"
                                       f"Document: IHE_XDM/SUBSET01/{name} ({document.type_label or document.type_code}).\r\n"
                                       "Metadata: IHE_XDM/SUBSET01/METADATA.XML (ebRS 3.0, IHE ITI XDS.b).\r\n")
    return out.getvalue()


def _slot(name: str, *values: str) -> str:
    return (f'<rim:Slot name={quoteattr(name)}><rim:ValueList>'
            + "".join(f"<rim:Value>{escape(v)}</rim:Value>" for v in values) + "</rim:ValueList></rim:Slot>")


def _metadata(document: Document, name: str, patient: str, author: str, stamp: str, set_id: str) -> bytes:
    digest = hashlib.sha1(document.data).hexdigest()  # noqa: S324 - XDS `hash` is SHA-1 by definition
    entry = (
        f'<rim:ExtrinsicObject id="Document01" objectType="{XDS_DOC_ENTRY}" mimeType={quoteattr(document.media_type)}>'
        + _slot("creationTime", stamp) + _slot("hash", digest) + _slot("size", str(len(document.data)))
        + _slot("sourcePatientId", patient) + _slot("URI", name) + _slot("languageCode", "fr-FR")
        + f'<rim:Classification classificationScheme="{XDS_AUTHOR}" classifiedObject="Document01" nodeRepresentation="">'
        + _slot("authorPerson", author) + "</rim:Classification>"
        + f'<rim:Classification classificationScheme="{XDS_TYPE_CODE}" classifiedObject="Document01" '
        + f'nodeRepresentation={quoteattr(document.type_code)}>' + _slot("codingScheme", "2.16.840.1.113883.6.1")
        + f'<rim:Name><rim:LocalizedString value={quoteattr(document.type_label or document.type_code)}/></rim:Name>'
        + "</rim:Classification>"
        + f'<rim:ExternalIdentifier identificationScheme="{XDS_PATIENT_ID}" value={quoteattr(patient)} '
        + 'registryObject="Document01"><rim:Name><rim:LocalizedString value="XDSDocumentEntry.patientId"/></rim:Name>'
        + "</rim:ExternalIdentifier>"
        + f'<rim:ExternalIdentifier identificationScheme="{XDS_UNIQUE_ID}" value={quoteattr(document.unique_id)} '
        + 'registryObject="Document01"><rim:Name><rim:LocalizedString value="XDSDocumentEntry.uniqueId"/></rim:Name>'
        + "</rim:ExternalIdentifier></rim:ExtrinsicObject>")
    subset = (
        '<rim:RegistryPackage id="SubmissionSet01">' + _slot("submissionTime", stamp)
        + f'<rim:Classification classificationScheme="{XDS_SUBMISSION_SET}" classifiedObject="SubmissionSet01" '
        + 'nodeRepresentation=""/>'
        + f'<rim:ExternalIdentifier identificationScheme="{SUBSET_PATIENT_ID}" value={quoteattr(patient)} '
        + 'registryObject="SubmissionSet01"/>'
        + f'<rim:ExternalIdentifier identificationScheme="{SUBSET_UNIQUE_ID}" value={quoteattr(set_id)} '
        + 'registryObject="SubmissionSet01"/></rim:RegistryPackage>'
        + '<rim:Association associationType="urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember" '
        + 'sourceObject="SubmissionSet01" targetObject="Document01" id="Association01">'
        + _slot("SubmissionSetStatus", "Original") + "</rim:Association>")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<lcm:SubmitObjectsRequest xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0" '
            'xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"><rim:RegistryObjectList>'
            + entry + subset + "</rim:RegistryObjectList></lcm:SubmitObjectsRequest>\n").encode("utf-8")


def _index(document: Document, name: str, hospital: str) -> str:
    return ("<!DOCTYPE html><html lang=\"fr\"><head><meta charset=\"utf-8\"><title>IHE_XDM</title></head><body>"
            f"<p>Document transmis par {escape(hospital)} :</p>"
            f"<p><a href=\"IHE_XDM/SUBSET01/{name}\">{escape(document.type_label or document.type_code)}</a></p>"
            "</body></html>\r\n")
