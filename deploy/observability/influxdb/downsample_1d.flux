// ccr-gateway: the hourly points (bucket "metrics_1h", kept 90 days) down to one point a day (bucket
// "metrics_1d", kept 2 years). Runs at midnight UTC, 15 minutes late so that the hourly task has
// written the day's last hour.
//
// Cumulative series keep the day's last value; gauges the mean of the hourly means (field "value")
// and the maximum of the hourly maxima (field "max").
option task = {name: "ccr-gateway downsample 1d", every: 1d, offset: 15m}

data = from(bucket: "metrics_1h") |> range(start: -task.every)

data
    |> filter(fn: (r) => r._measurement =~ /(_total|_count|_sum|_bucket)$/ and r._field == "value")
    |> aggregateWindow(every: task.every, fn: last, createEmpty: false)
    |> to(bucket: "metrics_1d")

data
    |> filter(fn: (r) => r._measurement !~ /(_total|_count|_sum|_bucket)$/ and r._field == "value")
    |> aggregateWindow(every: task.every, fn: mean, createEmpty: false)
    |> to(bucket: "metrics_1d")

data
    |> filter(fn: (r) => r._measurement !~ /(_total|_count|_sum|_bucket)$/ and r._field == "max")
    |> aggregateWindow(every: task.every, fn: max, createEmpty: false)
    |> to(bucket: "metrics_1d")
