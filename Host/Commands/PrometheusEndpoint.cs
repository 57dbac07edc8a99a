using System.Globalization;
using System.Net;
using ActorBlk.Hardware.Queues;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;

namespace ActorBlk.Host.Commands;

/// <summary>
/// serve's Prometheus endpoint: the <c>ActorBlk</c> meter through OpenTelemetry's Prometheus
/// exporter on Kestrel at <c>http://ADDRESS:PORT/metrics</c> (<c>actorblk.metrics.prometheus</c>,
/// off by default), with limits that keep a misbehaving client from exhausting the node.
/// </summary>
/// <remarks>
/// It was the exporter's HttpListener (.NET's managed one, off Windows), which an outside audit
/// found unfit for a reachable port: a request line without a line end was read without limit and
/// by a recursion (300 MB aborted the node with a stack overflow), connections were neither limited
/// nor timed out once they had sent a byte (some 19,500 used up the node's descriptors), and a
/// client that stopped reading held later scrapes for the exporter's 60 s.
/// </remarks>
internal sealed class PrometheusEndpoint : IDisposable
{
    /// <summary>The <c>service.name</c> of the scrape's <c>target_info</c>.</summary>
    public const string ServiceName = "actorblk";

    /// <summary>
    /// Connections open at once; the next is closed as soon as it is accepted. Prometheus keeps one
    /// connection to a target (two for a pair of servers), so 64 leaves room for people with curl
    /// and holds the endpoint's share of the node's descriptors and buffers (64 KiB in, 64 KiB out
    /// each) to a few megabytes.
    /// </summary>
    public const int MaxConnections = 64;

    /// <summary>The longest request line (Kestrel's default): 8 KiB.</summary>
    public const int MaxRequestLineSize = 8 * 1024;

    /// <summary>The most bytes of header lines (Kestrel's default, as the HttpListener had): 32 KiB.</summary>
    public const int MaxRequestHeadersTotalSize = 32 * 1024;

    /// <summary>The most header lines; Prometheus sends five.</summary>
    public const int MaxRequestHeaderCount = 32;

    /// <summary>The time a client has to send a request's line and headers.</summary>
    public static readonly TimeSpan RequestHeadersTimeout = TimeSpan.FromSeconds(10);

    /// <summary>The time an idle kept-alive connection stays open.</summary>
    public static readonly TimeSpan KeepAliveTimeout = TimeSpan.FromSeconds(30);

    /// <summary>
    /// The rate below which a client that reads a response is dropped: 16 KiB/s over the response
    /// so far, with a grace period of 5 s for each of the exporter's writes (64 KiB). Kestrel's
    /// default, 240 bytes/s, let a client read a 64 KB scrape for 4 minutes.
    /// </summary>
    public static readonly MinDataRate MinResponseDataRate = new(bytesPerSecond: 16 * 1024, gracePeriod: TimeSpan.FromSeconds(5));

    /// <summary>
    /// The longest a scrape may take, waiting for its collection included (the exporter's default
    /// was 60 s; Prometheus's own scrape timeout is 10 s by default and it sends it, and the
    /// shorter applies). A client that stops reading a scrape larger than the sockets hold keeps the
    /// next collection of its format waiting, so this bounds how long it holds later scrapes.
    /// </summary>
    public static readonly TimeSpan ScrapeTimeout = TimeSpan.FromSeconds(10);

    private readonly MeterProvider _provider;
    private readonly WebApplication _web;

    private PrometheusEndpoint(MeterProvider provider, WebApplication web, IPEndPoint localEndPoint)
    {
        _provider = provider;
        _web = web;
        LocalEndPoint = localEndPoint;
    }

    /// <summary>The address and port the endpoint listens on (the port chosen for port 0).</summary>
    public IPEndPoint LocalEndPoint { get; }

    /// <summary>
    /// The URL prefix of <paramref name="listen"/> (<c>ADDRESS:PORT</c>, an IPv6 address in
    /// brackets), <c>http://ADDRESS:PORT/</c>; null for null, empty or <c>off</c>. An IPv4 address
    /// written as IPv6 (<c>[::ffff:127.0.0.1]</c>) is its IPv4 one; <c>0.0.0.0</c> and <c>[::]</c>
    /// listen on every address, as the remoting and NBD addresses may.
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
            throw new UsageException($"actorblk.metrics.prometheus: '{listen}' is not ADDRESS:PORT (for example 127.0.0.1:9464 or [::1]:9464) or off.");
        }

        if (endpoint.Address.IsIPv4MappedToIPv6)
        {
            endpoint = new IPEndPoint(endpoint.Address.MapToIPv4(), endpoint.Port);
        }

        return string.Create(CultureInfo.InvariantCulture, $"http://{endpoint}/");
    }

    /// <summary>
    /// Starts the endpoint at <paramref name="prefix"/> (from <see cref="Prefix"/>); dispose it to
    /// stop. The scrape's <c>target_info</c> names the service <c>actorblk</c> and, with
    /// <paramref name="instance"/> (the node's remoting <c>host:port</c>, as the cluster names it),
    /// the instance; OpenTelemetry's default was <c>unknown_service:dotnet</c>.
    /// </summary>
    /// <exception cref="CommandFailedException">The address cannot be listened on (in use, or not this machine's): one line naming it and the key.</exception>
    public static PrometheusEndpoint Start(string prefix, string? instance = null) =>
        Start(IPEndPoint.Parse(new Uri(prefix).Authority), instance);

    /// <summary>As <see cref="Start(string, string?)"/> at <paramref name="listen"/>, which may have port 0 (the specs').</summary>
    /// <exception cref="CommandFailedException">The address cannot be listened on (in use, or not this machine's): one line naming it and the key.</exception>
    internal static PrometheusEndpoint Start(IPEndPoint listen, string? instance = null)
    {
        var version = typeof(PrometheusEndpoint).Assembly.GetName().Version?.ToString();
        var provider = Sdk.CreateMeterProviderBuilder()
            .ConfigureResource(resource => resource.AddService(ServiceName, serviceVersion: version,
                autoGenerateServiceInstanceId: instance is null, serviceInstanceId: instance))
            .AddMeter(BlockMetrics.MeterName)
            .AddPrometheusExporter(options =>
            {
                options.ScrapeResponseCacheDurationMilliseconds = 0; // every scrape reads the counters anew
                options.ScrapeResponseTimeoutMilliseconds = (int)ScrapeTimeout.TotalMilliseconds;
            })
            .Build();
        WebApplication? web = null;
        try
        {
            web = Build(provider, listen);
            web.StartAsync().GetAwaiter().GetResult();
            var bound = new Uri(web.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single());
            return new PrometheusEndpoint(provider, web, new IPEndPoint(listen.Address, bound.Port));
        }
        catch (Exception ex) when (SocketError(ex) is { } socket)
        {
            Stop(web, provider);
            // An operator's error, as the NBD and remoting addresses in use are: one line, no stack
            // (it was "The node failed: Address already in use" with 16 stack lines: an outside audit).
            throw new CommandFailedException($"the Prometheus endpoint cannot listen on {listen} ({socket.Message}; another process?): choose another with actorblk.metrics.prometheus, or off");
        }
        catch
        {
            Stop(web, provider);
            throw;
        }
    }

    /// <summary>Stops listening, closes the connections (those in a request get a second to finish) and the meter provider.</summary>
    public void Dispose() => Stop(_web, _provider);

    // Kestrel with the exporter's middleware at /metrics and nothing else: no configuration files,
    // environment variables or logging providers (the node's log stays the node's), no lifetime
    // of its own (serve's host handles the signals; the endpoint stops when serve disposes it).
    private static WebApplication Build(MeterProvider provider, IPEndPoint listen)
    {
        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions
        {
            ApplicationName = typeof(PrometheusEndpoint).Assembly.GetName().Name,
            EnvironmentName = Environments.Production,
            ContentRootPath = AppContext.BaseDirectory,
        });
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton<IHostLifetime, NoLifetime>();
        builder.Services.Configure<HostOptions>(options => options.ShutdownTimeout = TimeSpan.FromSeconds(1));
        builder.WebHost.UseKestrelCore().ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            var limits = kestrel.Limits;
            limits.MaxConcurrentConnections = MaxConnections;
            limits.MaxConcurrentUpgradedConnections = 0;
            limits.MaxRequestLineSize = MaxRequestLineSize;
            limits.MaxRequestHeadersTotalSize = MaxRequestHeadersTotalSize;
            limits.MaxRequestHeaderCount = MaxRequestHeaderCount;
            limits.MaxRequestBodySize = 0;
            limits.MaxRequestBufferSize = 64 * 1024;
            limits.RequestHeadersTimeout = RequestHeadersTimeout;
            limits.KeepAliveTimeout = KeepAliveTimeout;
            limits.MinResponseDataRate = MinResponseDataRate;
            kestrel.Listen(listen, endpoint => endpoint.Protocols = HttpProtocols.Http1);
        });

        var web = builder.Build();
        web.UseOpenTelemetryPrometheusScrapingEndpoint(provider, predicate: null, path: "/metrics", configureBranchedPipeline: branch => branch.Use(GetOrHeadOnly), optionsName: null);
        return web;
    }

    // A scrape is a GET (HEAD gets its headers); anything else is 405, as RFC 9110 asks.
    private static Task GetOrHeadOnly(HttpContext context, RequestDelegate next)
    {
        if (HttpMethods.IsGet(context.Request.Method) || HttpMethods.IsHead(context.Request.Method))
        {
            return next(context);
        }

        context.Response.StatusCode = StatusCodes.Status405MethodNotAllowed;
        context.Response.Headers.Allow = "GET, HEAD";
        return Task.CompletedTask;
    }

    private static void Stop(WebApplication? web, MeterProvider provider)
    {
        if (web is not null)
        {
            using (var stopping = new CancellationTokenSource(TimeSpan.FromSeconds(1)))
            {
                web.StopAsync(stopping.Token).GetAwaiter().GetResult();
            }

            ((IDisposable)web).Dispose();
        }

        provider.Dispose();
    }

    // The socket error of a failed bind (Kestrel wraps "in use" in an IOException and an
    // AddressInUseException; "Cannot assign requested address" comes as it is).
    private static System.Net.Sockets.SocketException? SocketError(Exception? ex)
    {
        for (; ex is not null; ex = ex.InnerException)
        {
            if (ex is System.Net.Sockets.SocketException socket)
            {
                return socket;
            }
        }

        return null;
    }

    private sealed class NoLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
