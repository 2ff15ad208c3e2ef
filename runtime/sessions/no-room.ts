// A pre-warm (an opportunistic rehydrate) that would have to evict a resident session: it is not
// done, and the session stays hibernated until a request asks for it.
export class NoRoom extends Error {
  constructor(message: string) { super(message); this.name = "NoRoom"; }
}
