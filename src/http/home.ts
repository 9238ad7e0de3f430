/** `GET /`: what this server is and which routes it has (public, like /health). */
import { Hono, type Env } from 'hono'
import type { RouteDeps } from './route-deps.ts'

export const ROUTES = [
  'POST /v1/sentiment',
  'POST /v1/chat',
  'POST /v1/chat/completions',
  'POST /analyze',
  'GET /v1/models',
  'GET /health',
] as const

export function homeRoute<E extends Env>(deps: RouteDeps<E>): Hono<E> {
  return new Hono<E>().get('/', (c) =>
    c.json({ name: 'qwen-edge', model: deps.config(c).modelId ?? null, routes: ROUTES }),
  )
}
