using System.Globalization;
using System.Net;
using ActorBlk.Hardware.Queues;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;

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
    /// <exception cref="UsageException"><paramref name="listen"/> is not ADDRESS:PORT, or its address is IPv6 or 0.0.0.0 (the exporter's HttpListener cannot listen there).</exception>
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

        // The exporter's HttpListener (the managed one, off Windows) cannot listen on either: an IPv6
        // literal fails its start with "Invalid port in prefix" (dotnet/runtime#34399) and 0.0.0.0
        // with "The request is not supported"; both exited 1 naming "another process?" (an outside audit).
        if (endpoint.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6)
        {
            throw new UsageException($"actorblk.metrics.prometheus: '{listen}' is an IPv6 address; the exporter's HttpListener listens only on an IPv4 address (for example 127.0.0.1:9464), or off.");
        }

        if (endpoint.Address.Equals(IPAddress.Any))
        {
            throw new UsageException($"actorblk.metrics.prometheus: '{listen}': the exporter's HttpListener cannot listen on every address (0.0.0.0); give one of this machine's addresses (for example 127.0.0.1:9464), or off.");
        }

        return string.Create(CultureInfo.InvariantCulture, $"http://{endpoint.Address}:{endpoint.Port}/");
    }

    /// <summary>The <c>service.name</c> of the scrape's <c>target_info</c>.</summary>
    public const string ServiceName = "actorblk";

    /// <summary>
    /// Starts the exporter at <paramref name="prefix"/> (from <see cref="Prefix"/>); dispose the
    /// provider to stop it. The scrape's <c>target_info</c> names the service <c>actorblk</c> and,
    /// with <paramref name="instance"/> (the node's remoting <c>host:port</c>, as the cluster
    /// names it), the instance; OpenTelemetry's default was <c>unknown_service:dotnet</c>.
    /// </summary>
    /// <exception cref="CommandFailedException">The address cannot be listened on (in use, or not this machine's): one line naming it and the key.</exception>
    public static MeterProvider Start(string prefix, string? instance = null)
    {
        var uri = new Uri(prefix);
        var version = typeof(PrometheusEndpoint).Assembly.GetName().Version?.ToString();
        try
        {
            return Sdk.CreateMeterProviderBuilder()
                .ConfigureResource(resource => resource.AddService(ServiceName, serviceVersion: version,
                    autoGenerateServiceInstanceId: instance is null, serviceInstanceId: instance))
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
        catch (Exception ex) when (ex is HttpListenerException or System.Net.Sockets.SocketException || ex.InnerException is HttpListenerException or System.Net.Sockets.SocketException)
        {
            // An operator's error, as the NBD and remoting addresses in use are: one line, no stack
            // (it was "The node failed: Address already in use" with 16 stack lines: an outside audit).
            throw new CommandFailedException($"the Prometheus endpoint cannot listen on {uri.Host}:{uri.Port} ({(ex.InnerException ?? ex).Message}; another process?): choose another with actorblk.metrics.prometheus, or off");
        }
    }
}
