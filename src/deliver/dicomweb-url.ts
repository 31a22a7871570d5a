// DICOMweb URLs: the STOW-RS endpoint of a base URL, and a form safe to print. Kept apart from the
// sender so that the command line can describe a destination without loading the HTTP stack.

/** The STOW-RS endpoint for a DICOMweb base URL (<base>/studies). */
export function stowUrl(base: string): URL {
  const u = new URL(base);
  if (!/\/studies\/?$/.test(u.pathname)) u.pathname = u.pathname.replace(/\/?$/, '/studies');
  return u;
}

/** The URL without credentials or query, for logs and listings. */
export function displayUrl(base: string): string {
  try {
    const u = new URL(base);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return '(invalid URL)';
  }
}
