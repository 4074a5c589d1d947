// ccr-gateway: the raw per-second points (bucket "metrics", kept 7 days) down to one point an hour
// (bucket "metrics_1h", kept 90 days). Runs at the top of every hour, 5 minutes late so that the
// exporter's last seconds of the hour have arrived; `now` is the scheduled time, so the range is
// exactly the hour that just ended.
//
// Counters and histogram parts (_total, _count, _sum, _bucket) are cumulative: the hour's last value
// keeps every rate computable (derivative(nonNegative: true) over the downsampled points).
// (The regex is written out in each filter: a literal lets InfluxDB push the filter down to storage.)
// Gauges: the hour's mean (field "value") and its maximum (field "max").
option task = {name: "ccr-gateway downsample 1h", every: 1h, offset: 5m}

data =
    from(bucket: "metrics")
        |> range(start: -task.every)
        |> filter(fn: (r) => r._field == "value")

data
    |> filter(fn: (r) => r._measurement =~ /(_total|_count|_sum|_bucket)$/)
    |> aggregateWindow(every: task.every, fn: last, createEmpty: false)
    |> to(bucket: "metrics_1h")

data
    |> filter(fn: (r) => r._measurement !~ /(_total|_count|_sum|_bucket)$/)
    |> aggregateWindow(every: task.every, fn: mean, createEmpty: false)
    |> to(bucket: "metrics_1h")

data
    |> filter(fn: (r) => r._measurement !~ /(_total|_count|_sum|_bucket)$/)
    |> aggregateWindow(every: task.every, fn: max, createEmpty: false)
    |> set(key: "_field", value: "max")
    |> to(bucket: "metrics_1h")
