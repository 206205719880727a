/**
 * Routing consistency (Liang et al., "Not All Models Suit Expert Offloading"): SRP and SCH per
 * layer, ebserve's own LRU/LFU caches replayed beside them, and the cache size each layer needs.
 * consistency.ts holds the metrics (pure functions over traces), report.ts the per-layer report and
 * its chart, window.ts the recorder and the server's rolling window.
 */
export { cacheHitRate, checkSegment, longestSequence, segmentRoutingBest, type CachePolicyName, type LayerTrace } from './consistency.js';
export { checkTarget, layerReport, routingChart, routingReport, routingReportInSlices, type CachePoint, type LayerReport, type ReportOptions, type RoutingReport } from './report.js';
export { LIVE_REPORT, RoutingWindow, TraceRecorder, type RoutingEvent, type RoutingShape, type WindowOptions } from './window.js';
