// A staged package's stages each in a Worker of its own (Worker Loader, the default): see
// staged-suite.ts.
import { describeStagedWorker } from './staged-suite.ts'

describeStagedWorker('loader')
