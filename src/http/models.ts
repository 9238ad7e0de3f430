/**
 * `GET /v1/models` (OpenAI's list shape) and `GET /v1/models/:id`. The one model this server
 * holds; its id is `config.modelId`, else the engine's (which loads it).
 */
import { Hono, type Context, type Env } from 'hono'
import { AppError } from '../core/errors.ts'
import { modelBody } from './openai-shapes.ts'
import type { RouteDeps } from './route-deps.ts'

export function modelsRoute<E extends Env>(deps: RouteDeps<E>): Hono<E> {
  const created = Math.floor(Date.now() / 1000) // when this app started serving
  const modelId = async (c: Context<E>) => deps.config(c).modelId ?? (await deps.engine(c)).info.id
  return new Hono<E>()
    .get('/', async (c) => c.json({ object: 'list', data: [modelBody(await modelId(c), created)] }))
    .get('/:id{.+}', async (c) => {
      const id = await modelId(c)
      if (c.req.param('id') !== id)
        throw new AppError('not_found', `No model named ${c.req.param('id')}`)
      return c.json(modelBody(id, created))
    })
}
