// The part of workerd's `cloudflare:workers` module the Worker uses, declared here so the
// project needs no @cloudflare/workers-types (whose globals clash with the DOM lib).
declare module 'cloudflare:workers' {
  /** A Durable Object class: its public methods are callable over RPC through a stub. */
  export abstract class DurableObject<Env = unknown> {
    protected readonly ctx: unknown
    protected readonly env: Env
    constructor(ctx: unknown, env: Env)
  }
  /** A named entrypoint of a Worker: its public methods are callable over RPC. */
  export abstract class WorkerEntrypoint<Env = unknown, Props = unknown> {
    protected readonly ctx: { props: Props }
    protected readonly env: Env
    constructor(ctx: unknown, env: Env)
  }
}
