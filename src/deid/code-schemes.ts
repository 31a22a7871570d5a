// Coding schemes whose code meanings are the scheme's own controlled text (PS3.16 Table 8-1 and
// the external schemes it registers). A CodeMeaning under any other designator (99…, L, local
// schemes, or none) is free text someone typed, and is treated like free text.
// Left out on purpose: NPI (codes are people: provider identifiers) and DCMUID (codes are UIDs).
const STANDARD_SCHEMES = new Set([
  'DCM', 'SCT', 'SRT', 'SNM3', 'LN', 'RADLEX', 'RADELEMENT', 'UCUM', 'FMA', 'MDC', 'NCIT', 'UMLS', 'MSH',
  'I10', 'I10P', 'I9', 'I9C', 'I11', 'ICD10', 'ICD9', 'ICDO3', 'ACR', 'ASTM-SIGPURPOSE', 'BARI', 'BI',
  'C4', 'C5', 'CD2', 'DC', 'HPC', 'ISO3166_1', 'ISO639_1', 'ISO639_2', 'NCDR', 'NEU', 'NICIP', 'POS',
  'RFC3066', 'RFC5646', 'RXNORM', 'UPC', 'ITIS_TSN', 'PUBCHEM_CID', 'MA', 'MGI', 'NBO', 'CAS', 'ATC',
  'NDC', 'HGNC', 'GO', 'CHEBI', 'UBERON', 'CL', 'PATO', 'OBI', 'NCBITAXON', 'IEEE', 'IBSI', 'ISO_OID',
  'SCT-RT', 'LOINC', 'SNOMED', 'SNOMED-CT', 'W3C_HTML', 'IETF', 'EMDN', 'ENSEMBL', 'ORPHA', 'ORDO',
]);

/** True when the designator names a standard, controlled coding scheme. */
export function isStandardCodingScheme(designator: string | undefined): boolean {
  return designator !== undefined && STANDARD_SCHEMES.has(designator.trim().toUpperCase());
}
