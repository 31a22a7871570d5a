// The waits of a spool-draining queue (SpoolDrainer): a worker sleeps for a backoff
// or until new work; new work, or stop, wakes every sleeper at once.
export class Sleeper {
  private wakers = new Set<() => void>();

  /** How many are asleep now. */
  get sleeping(): number {
    return this.wakers.size;
  }

  wakeAll(): void {
    const w = [...this.wakers];
    this.wakers.clear();
    w.forEach((f) => f());
  }

  /** Resolves after ms, or at the next wakeAll, whichever comes first. */
  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.wakers.delete(done);
        resolve();
      };
      const t = setTimeout(done, Math.max(0, ms));
      this.wakers.add(done);
    });
  }
}
