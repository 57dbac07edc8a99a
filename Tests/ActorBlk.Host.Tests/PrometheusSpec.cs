using System.Net;
using System.Net.Sockets;
using System.Text.RegularExpressions;
using ActorBlk.Hardware.Requests;
using ActorBlk.Host.Commands;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>serve's Prometheus endpoint (<c>actorblk.metrics.prometheus</c>), scraped on loopback.</summary>
public sealed class PrometheusSpec
{
    private static int FreePort()
    {
        using var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        return ((IPEndPoint)probe.LocalEndpoint).Port;
    }

    [Fact]
    public void An_address_in_use_is_one_line_naming_it_and_the_key()
    {
        // serve failed its start with "Address already in use" and 16 stack lines (an outside audit).
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        var port = ((IPEndPoint)taken.LocalEndpoint).Port;

        var refused = Assert.Throws<CommandFailedException>(() => PrometheusEndpoint.Start(PrometheusEndpoint.Prefix($"127.0.0.1:{port}")!).Dispose());

        Assert.StartsWith($"the Prometheus endpoint cannot listen on 127.0.0.1:{port} (", refused.Message, StringComparison.Ordinal);
        Assert.EndsWith("choose another with actorblk.metrics.prometheus, or off", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_scrape_shows_the_device_counters()
    {
        var driver = new ScriptedDriver { CompleteInline = true };
        var (queue, runtime) = TestQueues.Create(driver, name: "prom0");
        queue.Register();
        var read = TestQueues.Submit(queue, BlockOp.Read, 0, 8);
        runtime.RunRound();
        Assert.Equal(BlockStatus.Ok, await read);

        // The free port is probed, then bound by the listener: a process started in between (other
        // specs start nodes) may take it, so a listener that could not serve is tried on another.
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        string? text = null;
        for (var attempt = 0; text is null; attempt++)
        {
            var port = FreePort();
            var prefix = PrometheusEndpoint.Prefix($"127.0.0.1:{port}");
            Assert.Equal($"http://127.0.0.1:{port}/", prefix);
            using var provider = PrometheusEndpoint.Start(prefix!, instance: "127.0.0.1:4053");
            try
            {
                text = await http.GetStringAsync(new Uri($"{prefix}metrics"));
            }
            catch (HttpRequestException) when (attempt < 2)
            {
            }
        }

        Assert.Matches(new Regex(@"^actorblk_io_operations_total\{[^}]*device=""prom0""[^}]*op=""read""[^}]*\} 1(\s|$)", RegexOptions.Multiline), text);
        Assert.Matches(new Regex(@"^actorblk_io_bytes_total\{[^}]*device=""prom0""[^}]*op=""read""[^}]*\} 4096(\s|$)", RegexOptions.Multiline), text);
        Assert.Matches(new Regex(@"^actorblk_tags_depth\{[^}]*device=""prom0""[^}]*\} 64(\s|$)", RegexOptions.Multiline), text);

        // The target names the service and the node (it said service_name="unknown_service:dotnet"
        // and no instance, so a Prometheus scraping several nodes could not tell them apart by it).
        Assert.Matches(new Regex(@"^target_info\{[^}]*service_name=""actorblk""[^}]*\} 1(\s|$)", RegexOptions.Multiline), text);
        Assert.Matches(new Regex(@"^target_info\{[^}]*service_instance_id=""127\.0\.0\.1:4053""", RegexOptions.Multiline), text);

        // BlockMetrics holds queues weakly (a removed device's queue is not kept alive by its
        // metrics): without this the queue, unused after the read, may be collected before the
        // scrape, and the scrape then shows no device at all (seen once in a CI run).
        GC.KeepAlive(queue);
        GC.KeepAlive(runtime);
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("off")]
    public void Off_starts_nothing(string? listen) => Assert.Null(PrometheusEndpoint.Prefix(listen));

    [Theory]
    [InlineData("9464")]
    [InlineData("localhost:9464")]
    [InlineData("127.0.0.1:0")]
    [InlineData("127.0.0.1:99999")]
    public void A_bad_address_is_a_usage_error(string listen) => Assert.Throws<UsageException>(() => PrometheusEndpoint.Prefix(listen));

    [Theory]
    [InlineData("[::1]:9464", "is an IPv6 address")]
    [InlineData("[::]:9464", "is an IPv6 address")]
    [InlineData("[::ffff:127.0.0.1]:9464", "is an IPv6 address")]
    [InlineData("0.0.0.0:9464", "cannot listen on every address (0.0.0.0)")]
    public void An_address_the_listener_cannot_take_is_a_usage_error_before_the_start(string listen, string reason)
    {
        // These passed the check, and the node's start failed (exit 1) with the HttpListener's
        // "Invalid port in prefix." or "The request is not supported." and "another process?":
        // the managed HttpListener takes no IPv6 literal (dotnet/runtime#34399) and no 0.0.0.0.
        var refused = Assert.Throws<UsageException>(() => PrometheusEndpoint.Prefix(listen));

        Assert.StartsWith($"actorblk.metrics.prometheus: '{listen}'", refused.Message, StringComparison.Ordinal);
        Assert.Contains(reason, refused.Message, StringComparison.Ordinal);
    }
}
