/** What every route gets from `createApp`: the engine, the settings and the load state. */
import type { Context, Env } from 'hono'
import type { Engine } from '../engine/types.ts'
import type { AppConfig } from './config.ts'

export type LoadPhase = 'idle' | 'loading' | 'ready' | 'failed'

export interface LoadState {
  state: LoadPhase
  /** Why the last load failed (safe to show). */
  error?: string
  /** How long the load took, once ready. */
  loadMs?: number
}

/** What the runtime can tell of its own memory (Node, Deno); Workers report none. */
export interface RuntimeMemory {
  /** Resident set of the whole process. */
  rssBytes?: number
  /** JS heap in use. */
  heapUsedBytes?: number
}

export interface RouteDeps<E extends Env> {
  /** The runtime's memory numbers for /health, where it has them. */
  memory?: () => RuntimeMemory
  /** Resolves the (memoised) engine; rejects with an AppError when it cannot load. */
  engine(c: Context<E>): Promise<Engine>
  config(c: Context<E>): AppConfig
  loadState(c: Context<E>): LoadState
}
