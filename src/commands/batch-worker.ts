// Worker thread of the batch command: receives lists of input files, answers with FileResults.
import { parentPort, workerData } from 'worker_threads';
import type { RouterConfig } from '../config/types';
import { DeidPipeline } from '../pipeline';
import { processFile } from './batch-file';

export interface BatchWorkerData { config: RouterConfig; salt: string; outgoing: string; fsync: boolean }
export interface BatchJob { items: Array<{ index: number; path: string }> }

const data = workerData as BatchWorkerData;
const pipeline = new DeidPipeline(data.config, data.salt);
parentPort!.on('message', (job: BatchJob) => {
  const results = job.items.map(({ index, path }) => ({ index, result: processFile(pipeline, path, data.outgoing, data.fsync) }));
  parentPort!.postMessage(results);
});
