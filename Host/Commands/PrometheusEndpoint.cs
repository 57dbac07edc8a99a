using System.Globalization;
using System.Net;
using ActorBlk.Hardware.Queues;
using OpenTelemetry;
using OpenTelemetry.Metrics;

namespace ActorBlk.Host.Commands;

/// <summary>
/// serve's Prometheus endpoint: the <c>ActorBlk</c> meter through OpenTelemetry's Prometheus
/// exporter on an HttpListener at <c>http://ADDRESS:PORT/metrics</c>
/// (<c>actorblk.metrics.prometheus</c>, off by default).
/// </summary>
internal static class PrometheusEndpoint
{
    /// <summary>
    /// The HttpListener prefix of <paramref name="listen"/> (<c>ADDRESS:PORT</c>); null for null,
    /// empty or <c>off</c>.
    /// </summary>
    /// <exception cref="UsageException"><paramref name="listen"/> is not ADDRESS:PORT.</exception>
    public static string? Prefix(string? listen)
    {
        if (string.IsNullOrWhiteSpace(listen) || listen is "off")
        {
            return null;
        }

        if (!IPEndPoint.TryParse(listen, out var endpoint) || endpoint.Port == 0 || !listen.Contains(':', StringComparison.Ordinal))
        {
            throw new UsageException($"actorblk.metrics.prometheus: '{listen}' is not ADDRESS:PORT (for example 127.0.0.1:9464) or off.");
        }

        var host = endpoint.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{endpoint.Address}]" : endpoint.Address.ToString();
        return string.Create(CultureInfo.InvariantCulture, $"http://{host}:{endpoint.Port}/");
    }

    /// <summary>Starts the exporter at <paramref name="prefix"/> (from <see cref="Prefix"/>); dispose the provider to stop it.</summary>
    public static MeterProvider Start(string prefix)
    {
        var uri = new Uri(prefix);
        return Sdk.CreateMeterProviderBuilder()
            .AddMeter(BlockMetrics.MeterName)
            .AddPrometheusHttpListener(options =>
            {
                options.Host = uri.Host;
                options.Port = uri.Port;
                options.ScrapeEndpointPath = "/metrics";
                options.ScrapeResponseCacheDurationMilliseconds = 0; // every scrape reads the counters anew
            })
            .Build();
    }
}
