// A staged package's stages each in a Durable Object (no LOADER binding): see staged-suite.ts.
import { describeStagedWorker } from './staged-suite.ts'

describeStagedWorker('objects')
