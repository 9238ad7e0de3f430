/**
 * Memoises an async load per key: concurrent and later callers share one promise, so twenty
 * first requests cause one load. A rejected promise is evicted, so the next call tries again
 * instead of replaying a cached failure (a repaired shard, a store that is back).
 */
export interface MemoizedLoad<T> {
  (key: string): Promise<T>
  /** Drops one key (or all): the next call loads again. */
  forget(key?: string): void
}

export function memoizeLoad<T>(load: (key: string) => Promise<T>): MemoizedLoad<T> {
  const cache = new Map<string, Promise<T>>()
  const get = (key: string): Promise<T> => {
    let promise = cache.get(key)
    if (!promise) {
      try {
        promise = load(key)
      } catch (err) {
        return Promise.reject(err) // a synchronous throw is a failed load too
      }
      cache.set(key, promise)
      promise.catch(() => {
        if (cache.get(key) === promise) cache.delete(key)
      })
    }
    return promise
  }
  return Object.assign(get, {
    forget(key?: string) {
      if (key === undefined) cache.clear()
      else cache.delete(key)
    },
  })
}
