"""The hospital feed: HL7 v2 over MLLP from hospitals' record systems, turned into notices to the care team."""
