// Polling for a condition in tests: state that changes on another socket's
// schedule (a replica registering, data arriving). The deadline is a
// safety net against hangs, not a timing assertion.

export async function until(cond: () => boolean | Promise<boolean>, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
