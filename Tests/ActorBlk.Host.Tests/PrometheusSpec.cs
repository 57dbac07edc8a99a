using System.Net;
using System.Net.Sockets;
using System.Text;
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
            using var endpoint = PrometheusEndpoint.Start(prefix!, instance: "127.0.0.1:4053");
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
    [InlineData("[::1]:9464", "http://[::1]:9464/")]
    [InlineData("[::]:9464", "http://[::]:9464/")]
    [InlineData("[::ffff:127.0.0.1]:9464", "http://127.0.0.1:9464/")]
    [InlineData("0.0.0.0:9464", "http://0.0.0.0:9464/")]
    public void An_IPv6_or_every_address_is_taken(string listen, string prefix)
    {
        // The HttpListener took neither (dotnet/runtime#34399, "The request is not supported."), so
        // they were refused; Kestrel listens on both, [::] on IPv4 too, as remoting and NBD may.
        Assert.Equal(prefix, PrometheusEndpoint.Prefix(listen));
    }

    [SkippableFact]
    public async Task A_scrape_on_the_IPv6_loopback_address_is_served()
    {
        Skip.IfNot(HasIPv6Loopback(), "no ::1 on this machine");
        using var endpoint = PrometheusEndpoint.Start(new IPEndPoint(IPAddress.IPv6Loopback, 0), instance: "[::1]:4053");
        Assert.Equal(IPAddress.IPv6Loopback, endpoint.LocalEndPoint.Address);

        var text = await ScrapeAsync(endpoint.LocalEndPoint);

        Assert.Matches(new Regex(@"^target_info\{[^}]*service_name=""actorblk""[^}]*\} 1(\s|$)", RegexOptions.Multiline), text);
    }

    [Fact]
    public async Task OpenMetrics_is_served_when_accepted_and_a_method_other_than_GET_or_HEAD_is_405()
    {
        using var endpoint = PrometheusEndpoint.Start(new IPEndPoint(IPAddress.Loopback, 0));
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        var metrics = new Uri($"http://{endpoint.LocalEndPoint}/metrics");

        using var open = new HttpRequestMessage(HttpMethod.Get, metrics);
        open.Headers.Accept.ParseAdd("application/openmetrics-text; version=1.0.0");
        using var openMetrics = await http.SendAsync(open);
        Assert.Equal(HttpStatusCode.OK, openMetrics.StatusCode);
        Assert.Equal("application/openmetrics-text", openMetrics.Content.Headers.ContentType?.MediaType);
        Assert.EndsWith("# EOF\n", await openMetrics.Content.ReadAsStringAsync(), StringComparison.Ordinal);

        using var post = await http.PostAsync(metrics, content: null);
        Assert.Equal(HttpStatusCode.MethodNotAllowed, post.StatusCode);
        using var elsewhere = await http.GetAsync(new Uri($"http://{endpoint.LocalEndPoint}/"));
        Assert.Equal(HttpStatusCode.NotFound, elsewhere.StatusCode);
    }

    [Fact]
    public async Task A_request_line_of_tens_of_megabytes_is_refused_early_and_the_next_scrape_is_served()
    {
        // The HttpListener read a request line without limit and by a recursion: 300 MB after
        // "GET /" aborted the node with a stack overflow, 128 MB took it to 2 GB (an outside audit).
        // Kestrel answers a line over 8 KiB with 414 and closes, so the client is stopped after
        // what the sockets' buffers hold, far short of what it means to send.
        const long Meant = 40L << 20;
        using var endpoint = PrometheusEndpoint.Start(new IPEndPoint(IPAddress.Loopback, 0));
        using (var client = new TcpClient())
        {
            await client.ConnectAsync(endpoint.LocalEndPoint);
            var stream = client.GetStream();
            var answer = ReadToEndAsync(stream);
            await stream.WriteAsync("GET /"u8.ToArray());
            var chunk = new byte[64 * 1024];
            Array.Fill(chunk, (byte)'a');
            long sent = 0;
            try
            {
                while (sent < Meant && !answer.IsCompleted)
                {
                    await stream.WriteAsync(chunk);
                    sent += chunk.Length;
                }
            }
            catch (IOException)
            {
                // The server closed the connection (a reset, as it left bytes unread).
            }

            Assert.True(sent < Meant, $"the server took all {sent} bytes of the request line without an answer or a close");
            var head = await answer;
            if (head.Length > 0)
            {
                Assert.Matches(@"^HTTP/1\.1 (414|400) ", head);
            }
        }

        Assert.Contains("target_info", await ScrapeAsync(endpoint.LocalEndPoint), StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_connection_past_the_limit_is_closed_and_a_scrape_is_served_once_the_holders_go()
    {
        // The HttpListener neither limited connections nor timed out one that had sent a byte:
        // some 19,500 that had sent "G" used up the node's 20,000 descriptors, NBD clients were
        // refused, then the node aborted (an outside audit). Kestrel keeps 64 and closes the next.
        using var endpoint = PrometheusEndpoint.Start(new IPEndPoint(IPAddress.Loopback, 0));
        var answered = Encoding.ASCII.GetBytes($"GET / HTTP/1.1\r\nHost: {endpoint.LocalEndPoint}\r\n\r\n");
        var scrape = Encoding.ASCII.GetBytes($"GET /metrics HTTP/1.1\r\nHost: {endpoint.LocalEndPoint}\r\nConnection: close\r\n\r\n");
        var holders = new List<TcpClient>();
        try
        {
            for (var i = 0; i < PrometheusEndpoint.MaxConnections; i++)
            {
                // A request that was answered (404, with no body) is a connection the server
                // counts; then it starts the next request and stops in its headers.
                var holder = new TcpClient();
                holders.Add(holder);
                await holder.ConnectAsync(endpoint.LocalEndPoint);
                var stream = holder.GetStream();
                await stream.WriteAsync(answered);
                Assert.StartsWith("HTTP/1.1 404 ", await ReadResponseHeadAsync(stream), StringComparison.Ordinal);
                await stream.WriteAsync("GET /metrics HTTP/1.1\r\nHo"u8.ToArray());
            }

            using var past = new TcpClient();
            await past.ConnectAsync(endpoint.LocalEndPoint);
            var pastStream = past.GetStream();
            try
            {
                await pastStream.WriteAsync(scrape);
            }
            catch (IOException)
            {
                // Closed before the request went out.
            }

            Assert.Equal(string.Empty, await ReadToEndAsync(pastStream));
        }
        finally
        {
            foreach (var holder in holders)
            {
                holder.Dispose();
            }
        }

        // The server frees a holder's place when it has read its close: a scrape that comes first
        // is closed as the one past the limit was, and is tried again.
        string? text = null;
        for (var attempt = 0; text is null; attempt++)
        {
            try
            {
                text = await ScrapeAsync(endpoint.LocalEndPoint);
            }
            catch (HttpRequestException) when (attempt < 1000)
            {
            }
        }

        Assert.Contains("target_info", text, StringComparison.Ordinal);
    }

    private static async Task<string> ScrapeAsync(IPEndPoint endpoint)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        return await http.GetStringAsync(new Uri($"http://{endpoint}/metrics"));
    }

    // What the server sends until it closes the connection, or until it resets it.
    private static async Task<string> ReadToEndAsync(NetworkStream stream)
    {
        var received = new MemoryStream();
        var buffer = new byte[4096];
        try
        {
            int n;
            while ((n = await stream.ReadAsync(buffer)) > 0)
            {
                received.Write(buffer, 0, n);
            }
        }
        catch (IOException)
        {
        }

        return Encoding.ASCII.GetString(received.ToArray());
    }

    // A response's head, and its body (by Content-Length), so the connection can carry the next request.
    private static async Task<string> ReadResponseHeadAsync(NetworkStream stream)
    {
        var head = new StringBuilder();
        var one = new byte[1];
        while (!head.ToString().EndsWith("\r\n\r\n", StringComparison.Ordinal))
        {
            Assert.Equal(1, await stream.ReadAsync(one));
            head.Append((char)one[0]);
        }

        var length = Regex.Match(head.ToString(), @"(?im)^content-length: *(\d+)");
        await stream.ReadExactlyAsync(new byte[length.Success ? int.Parse(length.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) : 0]);
        return head.ToString();
    }

    private static bool HasIPv6Loopback()
    {
        if (!Socket.OSSupportsIPv6)
        {
            return false;
        }

        try
        {
            using var probe = new TcpListener(IPAddress.IPv6Loopback, 0);
            probe.Start();
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }
}
