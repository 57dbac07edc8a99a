using System.CommandLine;
using System.Globalization;
using ActorBlk.Actors;
using ActorBlk.Actors.Hosting;
using ActorBlk.Actors.Nbd;
using ActorBlk.Actors.Serialization;
using Akka.Actor;
using Akka.Cluster;
using Akka.Hosting;
using Akka.Logger.Serilog;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Serilog;

namespace ActorBlk.Host.Commands;

/// <summary>
/// <c>actorblk serve</c>: runs an Akka cluster node on 127.0.0.1 from hocon.conf (alone, or joining
/// the nodes of <c>--seed</c>), creates the devices it lists, logs what it serves and the devices
/// that appear and disappear in the cluster, and stops cleanly on Ctrl-C, SIGTERM, SIGQUIT or SIGHUP (devices are
/// drained and destroyed by coordinated shutdown, then the node leaves the cluster).
/// </summary>
internal static class ServeCommand
{
    // The actorblk.nbd keys NbdServerOptions.Validate names at the start of its messages.
    private static readonly HashSet<string> NbdKeys = new(StringComparer.Ordinal)
    {
        "max-connections", "max-in-flight", "max-payload", "max-buffer-memory", "stall-timeout", "min-transfer-rate", "handshake-timeout", "shutdown-grace", "tls", "keepalive",
    };

    /// <summary>The <c>serve</c> command and its options.</summary>
    public static Command Create()
    {
        var config = CliOptions.Text("--config", "PATH", "the node's hocon.conf (default: ./hocon.conf, else the one beside the binary)");
        var port = CliOptions.OptionalInt("--port", 0, 65535, "remoting port, 0 for any free one (default: hocon.conf's, else 4053)");
        var seed = CliOptions.Text("--seed", "HOST:PORT[,HOST:PORT...]", "join the cluster of these nodes");
        var hostname = CliOptions.Text("--hostname", "H", "the host name or address other nodes reach this one at");
        var nbdListen = CliOptions.Text("--nbd-listen", "ADDRESS:PORT|unix:PATH|off", "the NBD export's address or Unix socket, or off (default: actorblk.nbd.listen)");

        // `--nbd-listen ''` turned the export off in silence (an outside CLI fuzzing audit): off is
        // spelled off. Refused by the parser, naming the option, before anything starts.
        nbdListen.Validators.Add(result =>
        {
            if (result.Tokens.Any(t => t.Value.Length == 0))
            {
                result.AddError("option --nbd-listen: an empty value is not ADDRESS:PORT or unix:PATH; write off to serve without an NBD export.");
                return;
            }

            // Any other value that is not an address or off is named as the option too: `null`
            // was refused as "actorblk.nbd.listen: null is not a value here", a key never written (a review).
            foreach (var token in result.Tokens)
            {
                try
                {
                    _ = NbdExportSettings.ParseListen(ListenValue(token.Value), out _);
                }
                catch (Akka.Configuration.ConfigurationException ex) when (IsUnix(token.Value))
                {
                    // A Unix socket's own reason (relative, too long, ...), under the option's name.
                    result.AddError($"option --nbd-listen: {ex.Message["actorblk.nbd.listen: ".Length..]}");
                }
                catch (Akka.Configuration.ConfigurationException)
                {
                    result.AddError($"option --nbd-listen: '{ActorBlk.Hardware.ControlCharacters.Escape(token.Value)}' is not ADDRESS:PORT (e.g. 127.0.0.1:10809, [::1]:10809), unix:PATH or off.");
                }
            }
        });
        var command = new Command("serve", "Run a node serving the devices of hocon.conf, joining the cluster of the seed nodes.")
        {
            config, port, seed, hostname, nbdListen,
        };
        command.SetAction((parse, _) => RunAsync(
            parse.GetValue(config) ?? NodeConfig.Locate(), parse.GetValue(port), parse.GetValue(seed), parse.GetValue(hostname), parse.GetValue(nbdListen)));
        return command;
    }

    /// <summary>
    /// Checks <c>akka.loglevel</c> and <c>akka.stdout-loglevel</c> with Akka's own reader before
    /// anything starts. Akka reads them only when the actor system starts, and a level it does not
    /// know (<c>akka.loglevel = BANANA</c>) failed the start with its ArgumentException and some 40
    /// stack lines on stdout (exit 1; an outside CLI fuzzing audit).
    /// </summary>
    /// <exception cref="Akka.Configuration.ConfigurationException">A level Akka does not know, or a list or section where the level belongs.</exception>
    internal static void CheckLogLevels(Akka.Configuration.Config config)
    {
        ArgumentNullException.ThrowIfNull(config);
        foreach (var key in new[] { "akka.loglevel", "akka.stdout-loglevel" })
        {
            var value = config.HasPath(key) ? config.GetValue(key) : null;
            if (value is null || value.Values.Any(v => v is Akka.Configuration.Hocon.HoconSubstitution))
            {
                continue;
            }

            if (!value.IsString())
            {
                throw new Akka.Configuration.ConfigurationException($"{key}: a value is expected (DEBUG, INFO, WARNING, ERROR or OFF), not a {(value.IsObject() ? "section { ... }" : "list [ ... ]")}.");
            }

            // HOCON's null read as '' ("akka.loglevel: '' is not DEBUG, ..."): named as every key's null is.
            var text = value.GetString()
                ?? throw new Akka.Configuration.ConfigurationException($"{key}: null is not a value here; remove the key for the default ({(key == "akka.loglevel" ? "INFO" : "WARNING")}).");
            try
            {
                Akka.Event.Logging.LogLevelFor(text);
            }
            catch (Exception ex) when (ex is ArgumentException or NullReferenceException)
            {
                throw new Akka.Configuration.ConfigurationException($"{key}: '{ActorBlk.Hardware.ControlCharacters.Escape(text)}' is not DEBUG, INFO, WARNING, ERROR or OFF.");
            }
        }
    }

    private static async Task<int> RunAsync(string path, int? port, string? seedText, string? hostname, string? nbdListen)
    {
        var seeds = seedText is not null ? NodeConfig.ParseSeeds(seedText) : null;
        if (hostname is not null && !NodeConfig.IsHostName(hostname))
        {
            throw new UsageException($"option --hostname: '{hostname}' is not a host name or address.");
        }

        var config = NodeConfig.AsClusterNode(NodeConfig.Load(path, port, seeds, hostname));

        // Refuse a bad device list or node-wide setting before anything starts, with the offending
        // key named. Before --nbd-listen's override and the NBD section are read: a section of the
        // wrong kind in the file (`actorblk = 5`, `actorblk.nbd = foo`) is hidden from the kind
        // check behind the override's `actorblk { nbd { listen } }` in front of it, and Akka's merge
        // of it with the defaults threw a NullReferenceException that aborted serve with a stack
        // trace (exit 134; a README audit).
        ActorBlkSettings.Create(config);
        CheckLogLevels(config);
        // Akka's keys that ActorBlk reads: enable-ssl = null failed with Akka's NotSupportedException
        // and its stack, and hostname = null bound every interface, as "" does.
        ActorBlkRemoting.CheckSettings(config);
        if (nbdListen is not null)
        {
            // A quoted HOCON string: a Unix socket's path may hold '\' and '"' (control characters were refused).
            var quoted = ListenValue(nbdListen).Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\"", "\\\"", StringComparison.Ordinal);
            config = Akka.Configuration.ConfigurationFactory.ParseString($"actorblk.nbd.listen = \"{quoted}\"").WithFallback(config);
        }

        // Refuse a bad NBD section (and a non-loopback address without TLS) before anything starts.
        ActorBlk.Hardware.Nbd.NbdServerOptions? nbdOptions;
        try
        {
            var nbd = NbdExportSettings.Create(config);
            nbdOptions = nbd.IsOff ? null : nbd.ToServerOptions();
            nbdOptions?.Validate();
        }
        catch (Akka.Configuration.ConfigurationException ex)
        {
            throw new UsageException($"NBD export: {ex.Message}");
        }
        catch (ArgumentException ex)
        {
            // "max-in-flight must be 1 to 65536, not -3. (Parameter 'MaxInFlight')" named a C#
            // property and not the key (an outside audit); the key's full name, without the property.
            var message = ex.ParamName is null ? ex.Message : ex.Message.Replace($" (Parameter '{ex.ParamName}')", string.Empty, StringComparison.Ordinal);
            var key = message.Split(' ', 2)[0];
            throw new UsageException($"NBD export: {(NbdKeys.Contains(key) ? "actorblk.nbd." : string.Empty)}{message}");
        }

        // Refuse an exposed remoting address without TLS, or TLS without a usable certificate (README, "Security").
        string? insecure;
        Akka.Remote.Transport.DotNetty.DotNettySslSetup? tls;
        try
        {
            insecure = ActorBlkRemoting.CheckBinding(config);
            tls = ActorBlkRemoting.TlsSetup(config);
        }
        catch (Akka.Configuration.ConfigurationException ex)
        {
            throw new UsageException(ex.Message);
        }

        // The admin secret remote writes and hotplug must carry: created (random, owner-only) if missing.
        var secret = RemoteSurface.ResolveSecret(config, create: true);
        var prometheusPrefix = PrometheusEndpoint.Prefix(config.HasPath("actorblk.metrics.prometheus") ? config.GetString("actorblk.metrics.prometheus") : null);
        // Akka's own events are filtered by akka.loglevel before they reach Serilog; the node's log
        // lets DEBUG through when that asks for it (it stayed at information: an outside audit)
        // and otherwise keeps the node's own information lines whatever Akka's level.
        Log.Logger = Logging.CreateConsoleLogger(string.Equals(config.GetString("akka.loglevel", "INFO"), "DEBUG", StringComparison.OrdinalIgnoreCase)
            ? Serilog.Events.LogEventLevel.Debug
            : Serilog.Events.LogEventLevel.Information);
        Log.Information("Starting ActorBlk node from {Config}", Path.GetFullPath(path));
        if (insecure is not null)
        {
            Log.Warning("{Warning}", insecure);
        }

        Log.Information("Remoting: {Tls}; administrative requests from the network {Admin}",
            tls is null ? "plain TCP" : "TLS with mutual authentication",
            secret is null ? "are refused (no admin secret)" : $"need the admin secret ({(config.GetString(RemoteSurface.SecretKey, string.Empty).Length > 0 ? RemoteSurface.SecretKey : config.GetString(RemoteSurface.SecretFileKey, string.Empty))})");

        ActorSystem? started = null;
        CommandFailedException? startupFailure = null;
        // The host is built inside the try: under a low open-file limit (ulimit -n 128) its
        // configuration providers failed to load an assembly, and the exception escaped as an
        // unhandled one (exit 134, an outside audit) where README promises a logged failure, exit 1.
        try
        {
            var builder = Microsoft.Extensions.Hosting.Host.CreateApplicationBuilder();
            builder.Logging.ClearProviders();
            builder.Services.AddAkka(NodeConfig.SystemName, (akka, _) => akka
                .AddHocon(config, HoconAddMode.Prepend)
                .AddHocon($"akka.stdout-logger-class = \"{SerilogFallbackLogger.TypeName}\"", HoconAddMode.Prepend)
                .ConfigureLoggers(loggers =>
                {
                    loggers.ClearLoggers();
                    loggers.AddSerilogLogging();
                })
                // A node without seeds forms its cluster before its devices are created: a stacked
                // device with a member on another node waits for that node to join and publish it.
                .AddStartup(async (system, _) =>
                {
                    started = system;
                    var cluster = Cluster.Get(system);
                    if (cluster.Settings.SeedNodes.Count == 0)
                    {
                        await cluster.JoinAsync(cluster.SelfAddress).ConfigureAwait(false);
                    }
                })
                .WithActorBlk()
                .WithTls(tls)
                .AddStartup(async (system, _) =>
                {
                    started = system;
                    var cluster = Cluster.Get(system);
                    var up = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                    cluster.RegisterOnMemberUp(() => up.TrySetResult());
                    var layer = BlockLayer.Get(system);

                    // A node whose seeds never answer keeps trying to join (Akka retries without end);
                    // told to stop meanwhile, it stops instead of waiting on.
                    using (layer.Stopping.UnsafeRegister(static t => ((TaskCompletionSource)t!).TrySetCanceled(), up))
                    {
                        try
                        {
                            await WaitUpSayingWhyNotAsync(cluster, up.Task).ConfigureAwait(false);
                        }
                        catch (OperationCanceledException)
                        {
                            Log.Warning("Stopping before the node joined its cluster (seed nodes {Seeds})", string.Join(", ", cluster.Settings.SeedNodes));
                            return;
                        }
                    }

                    Log.Information("Node {Address} is up (roles: {Roles}); CPU topology {Topology}",
                        cluster.SelfAddress, string.Join(",", cluster.SelfRoles), layer.Topology.Describe());
                    foreach (var device in layer.Devices.OrderBy(d => d.Name))
                    {
                        if (device.Queue.BioDriver is { } target)
                        {
                            Log.Information("Serving {Device}: stacked device of {Size}, {Block}-byte blocks, {Target}",
                                device.Name, Sizes.Format(device.Capacity), device.LogicalBlockSize, target.Description);
                            continue;
                        }

                        Log.Information("Serving {Device}: {Driver} device of {Size}, {Block}-byte blocks, {Queues} hardware queue(s) of {Depth} tags, {Dispatch} dispatch",
                            device.Name, device.Queue.Driver.Kind, Sizes.Format(device.Capacity), device.LogicalBlockSize,
                            device.Queue.HardwareContexts.Count, device.Queue.TagSet.QueueDepth, device.Dispatch.ToString().ToLowerInvariant());
                    }

                    Log.Information("Devices are addressable at {Guardian}", $"{cluster.SelfAddress}/user/{BlockLayer.GuardianName}");
                    if (nbdOptions is null)
                    {
                        Log.Information("NBD export is off (actorblk.nbd.listen = off)");
                    }
                    else
                    {
                        ActorBlk.Hardware.Nbd.NbdServer server;
                        try
                        {
                            server = NbdExport.Start(layer, nbdOptions).Server;
                        }
                        catch (System.Net.Sockets.SocketException ex)
                        {
                            // An operator's error, not a fault: stop the node and report it in one line
                            // (thrown here, Akka.Hosting would print it with its stack trace on stdout).
                            startupFailure = new CommandFailedException($"the NBD export cannot listen on {(nbdOptions.UnixSocket is { } socket ? $"unix:{socket}" : nbdOptions.Listen)} ({ex.Message}; another ActorBlk node or NBD server?): choose another with --nbd-listen, or off");
                            StopAfterStartupFailure(system);
                            return;
                        }
                        catch (IOException ex) when (nbdOptions.UnixSocket is not null)
                        {
                            // The Unix socket: another server on it, a file that is no socket, a
                            // missing directory (NbdServer.Start's message names which).
                            startupFailure = new CommandFailedException($"the NBD export {ex.Message}");
                            StopAfterStartupFailure(system);
                            return;
                        }

                        // The URI a client uses: nbds:// when the export requires TLS, as the registry
                        // publishes it (the log said nbd://, which such a server refuses: an outside audit).
                        foreach (var (device, index) in server.Catalog.Exports.Select((d, i) => (d, i)))
                        {
                            Log.Information("Exporting {Device} over NBD at {Uri}{Default}",
                                device.Name, server.ExportUri(device.Name), index == 0 ? " (the default export)" : string.Empty);
                        }

                        Log.Information("NBD export listening on {Endpoint} (TLS {Tls})", server.Address, nbdOptions.Tls.ToString().ToLowerInvariant());
                        if (server.UnixSocket is null)
                        {
                            layer.SetNbdEndpoint(NbdEndpointOf(server.LocalEndPoint, nbdOptions));
                        }
                        else if (layer.ClusterDevices.IsEnabled)
                        {
                            // The registry publishes nbd[s]://host:port/ and nothing else: a Unix
                            // socket names a file of this machine, which another node would look for
                            // on its own (ClusterDevice.IsWellFormed leaves such an entry out).
                            Log.Information("The cluster registry publishes no NBD endpoint for this node's devices: a Unix socket is reachable on this machine only, so other nodes cannot open them (listen on ADDRESS:PORT for that)");
                        }
                    }
                    LogClusterDevices(layer);
                }));

            using var portLock = ThrowIfRemotingPortInUse(config);
            using var metrics = prometheusPrefix is null ? null : PrometheusEndpoint.Start(prometheusPrefix, RemotingAddress(config));
            Log.Information(metrics is null
                ? "Prometheus metrics are off (actorblk.metrics.prometheus = off)"
                : "Prometheus metrics at {Prefix}metrics", prometheusPrefix);
            using var host = builder.Build();

            // SIGHUP (the terminal or the ssh session that started the node closed) stops the node
            // as SIGTERM does: the devices drain and are removed, mirrors stop clean, NBD clients get
            // their replies. The generic host handles SIGINT, SIGQUIT and SIGTERM only, and the
            // runtime's default for SIGHUP ended the process at once (exit 129, an outside audit).
            using var onHangup = OperatingSystem.IsWindows() ? null : System.Runtime.InteropServices.PosixSignalRegistration.Create(
                System.Runtime.InteropServices.PosixSignal.SIGHUP,
                context =>
                {
                    context.Cancel = true;
                    ((IHostApplicationLifetime)host.Services.GetService(typeof(IHostApplicationLifetime))!).StopApplication();
                });
            using (HostingEchoFilter.Install())
            {
                await host.RunAsync().ConfigureAwait(false);
            }

            if (startupFailure is not null)
            {
                throw startupFailure;
            }

            if (started is not null && BlockLayer.Get(started).FailureReason is { } failure)
            {
                // The guardian or an ActorBlk actor stopped: never a clean exit.
                Log.Fatal("ActorBlk node stopped after a failure: {Reason}", failure);
                return 1;
            }

            if (started is not null && TlsShutdown.Reason(started) is { } tlsFailure)
            {
                // Akka.Remote stops the whole system when a TLS handshake on a connection it opened
                // fails (a seed or member address where something else listens): it said only
                // "ActorBlk node stopped", exit 0, as if asked to stop (an outside TLS audit).
                Log.Fatal("ActorBlk node stopped: {Reason}", TlsShutdown.Explain(tlsFailure));
                return 1;
            }

            var reason = started is null ? null : CoordinatedShutdown.Get(started).ShutdownReason;
            if (reason is CoordinatedShutdown.ClusterDowningReason or CoordinatedShutdown.ClusterJoinUnsuccessfulReason)
            {
                // Downed by the cluster (its split-brain resolver kept the other side) or never
                // joined: the node did not stop because it was asked to, so a supervisor that
                // restarts failed services must see a failure (an outside audit saw exit 0).
                if (reason is CoordinatedShutdown.ClusterDowningReason && BlockLayer.Get(started!).QuarantinedBy is { } by)
                {
                    // Woken after a freeze or a partition the others outlasted: they removed it.
                    Log.Fatal("ActorBlk node stopped: the cluster downed it (member {Member} quarantined it: the others removed it while it did not answer)", by.ToString());
                    return 1;
                }

                Log.Fatal(reason is CoordinatedShutdown.ClusterDowningReason
                    ? "ActorBlk node stopped: the cluster downed it (its split-brain resolver kept the other side)"
                    : "ActorBlk node stopped: it could not join the cluster");
                return 1;
            }

            Log.Information("ActorBlk node stopped");
            return 0;
        }
        catch (Exception ex) when (ex.GetBaseException() is OperationCanceledException && started is not null && BlockLayer.Get(started).Stopping.IsCancellationRequested)
        {
            // Told to stop while the start-up still waited (for a stacked device's member, say).
            Log.Information("ActorBlk node stopped before its start-up finished");
            return 0;
        }
        catch (Exception ex) when (ExpectedFailure(ex) is { } expected)
        {
            // An operator's error (an address in use, a device file locked or missing): one log
            // line and, through the command line, one line on stderr; no stack trace.
            Log.Fatal("The node failed: {Reason}", expected.Message);
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(expected);
            throw; // not reached: the line above throws
        }
        catch (Exception ex)
        {
            Log.Fatal(ex, "The node failed: {Reason}", ex.GetBaseException().Message);
            return 1;
        }
        finally
        {
            await Log.CloseAndFlushAsync().ConfigureAwait(false);
        }
    }

    // The operator's error inside a start-up failure (Akka.Hosting and the generic host may wrap
    // it): reported by the command line on stderr, exit 1 (2 for device options that are wrong).
    private static Exception? ExpectedFailure(Exception ex)
    {
        for (Exception? e = ex; e is not null; e = e.InnerException)
        {
            if (e is CommandFailedException or ActorBlk.Hardware.Devices.BlockDeviceException or ActorBlk.Hardware.Devices.DeviceOptionsException)
            {
                return e;
            }

            if (e is AggregateException { InnerExceptions.Count: 1 } aggregate)
            {
                return ExpectedFailure(aggregate.InnerExceptions[0]);
            }
        }

        return null;
    }

    // Akka's transport binds with SO_REUSEPORT on Linux, so a second node on a port in use would
    // start beside the first and share its connections: refuse it first, naming the port.
    // The node's remoting address as the cluster names it (host:port: public-hostname and
    // public-port when set, an IPv6 address in brackets), or null without a fixed one.
    private static string? RemotingAddress(Akka.Configuration.Config config)
    {
        var tcp = config.GetConfig("akka.remote.dot-netty.tcp");
        if (tcp is null)
        {
            return null;
        }

        var host = ActorBlkRemoting.HostName(config, "public-hostname") is { Length: > 0 } publicHost ? publicHost : ActorBlkRemoting.HostName(config);
        var port = ActorBlkRemoting.OptionalPort(config, "public-port") is > 0 and int publicPort ? publicPort : ActorBlkRemoting.Port(config);
        if (host.Length == 0 || port <= 0)
        {
            return null;
        }

        host = System.Net.IPAddress.TryParse(host, out var ip) && ip.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{host}]" : host;
        return string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{host}:{port}");
    }

    // Returns the address's lock (RemotingPortLock), held while the node runs, or null.
    private static IDisposable? ThrowIfRemotingPortInUse(Akka.Configuration.Config config)
    {
        var tcp = config.GetConfig("akka.remote.dot-netty.tcp");
        if (tcp is null)
        {
            return null;
        }

        // Akka.NET's DotNetty transport binds hostname:port; it reads no bind-hostname or bind-port
        // (Akka JVM's keys). Read here, they locked and checked an address the node never binds.
        var port = ActorBlkRemoting.Port(config);
        var host = ActorBlkRemoting.HostName(config);
        if (port == 0 || host.Length == 0)
        {
            return null;
        }

        var address = System.Net.IPAddress.TryParse(host, out var parsed) ? parsed : System.Net.Dns.GetHostAddresses(host).FirstOrDefault();
        if (address is null)
        {
            return null; // Akka reports a name it cannot resolve itself
        }

        // The lock first: a node of this user starting on the address holds it before it listens.
        var held = RemotingPortLock.Acquire(address.ToString(), port);
        try
        {
            ActorBlk.Hardware.Interop.ListenSockets.ThrowIfInUse(new System.Net.IPEndPoint(address, port));
        }
        catch (System.Net.Sockets.SocketException ex) when (ex.SocketErrorCode == System.Net.Sockets.SocketError.AddressAlreadyInUse)
        {
            held?.Dispose();
            throw new CommandFailedException($"the remoting address {host}:{port} is in use (another ActorBlk node?); choose another with --port, or 0 for any free one ({ex.Message})");
        }

        return held;
    }

    // Stops the node (its devices drained and removed, the cluster left) without waiting for it.
    private static void StopAfterStartupFailure(ActorSystem system) =>
        _ = CoordinatedShutdown.Get(system).Run(StartupFailedReason.Instance);

    // Coordinated shutdown's reason when the start-up found an operator's error.
    private sealed class StartupFailedReason : CoordinatedShutdown.Reason
    {
        public static readonly StartupFailedReason Instance = new();

        public override int ExitCode => 1;
    }

    // Akka retries a join without end, and on the joining node its lines say only that an
    // association failed: a node with TLS off seeded at a TLS node (or the reverse) kept trying for
    // ever, and only the seed's log said why (an outside TLS audit). After three times Akka's
    // akka.cluster.retry-unsuccessful-join-after (10 s by default: 30 s) and then every six times it,
    // the node says it has not joined and what makes a seed refuse a node.
    // Each wait is kept from 1 s to Task.Delay's longest (about 49.7 days): a setting of 0s logged
    // the line without pause (81,000 lines in 8 s), and one of 30d made Task.Delay throw, so serve
    // failed its start-up with an ArgumentOutOfRangeException stack (a review).
    private static async Task WaitUpSayingWhyNotAsync(Cluster cluster, Task up)
    {
        var retry = cluster.Settings.RetryUnsuccessfulJoinAfter ?? TimeSpan.FromSeconds(10);
        static TimeSpan Times(TimeSpan retry, int n) =>
            TimeSpan.FromMilliseconds(Math.Clamp(retry.TotalMilliseconds * n, 1000, uint.MaxValue - 1.0));
        var waited = TimeSpan.Zero;
        using var done = new CancellationTokenSource();
        try
        {
            for (var wait = Times(retry, 3); ; wait = Times(retry, 6))
            {
                if (await Task.WhenAny(up, Task.Delay(wait, done.Token)).ConfigureAwait(false) == up)
                {
                    await up.ConfigureAwait(false);
                    return;
                }

                waited += wait;
                Log.Warning(
                    "This node has not joined its cluster after {Waited} s: no seed node ({Seeds}) admitted it, and it keeps trying. A seed refuses a node whose remoting differs from its own " +
                    "(akka.remote.dot-netty.tcp.enable-ssl, its certificate and actorblk.remote.pin-certificate; a node with TLS off cannot join a TLS cluster, nor the reverse), " +
                    "and a seed that cannot reach this node back at {Self} (akka.remote.dot-netty.tcp.public-hostname) cannot admit it; the seeds' logs say which",
                    waited.TotalSeconds.ToString("0.###", CultureInfo.InvariantCulture), string.Join(", ", cluster.Settings.SeedNodes), cluster.SelfAddress);
            }
        }
        finally
        {
            done.Cancel(); // the pending delay's timer
        }
    }

    // --nbd-listen's value as actorblk.nbd.listen takes it: a Unix socket's path as given (a '"' is
    // a character of a path); elsewhere without '"', as before (a quoted address was accepted).
    private static string ListenValue(string value) =>
        IsUnix(value) ? value : value.Replace("\"", string.Empty, StringComparison.Ordinal);

    private static bool IsUnix(string value) => value.StartsWith("unix:", StringComparison.Ordinal);

    // The address the registry publishes for this node's exports: nbds:// when the export takes
    // nothing but TLS.
    private static string NbdEndpointOf(System.Net.EndPoint? endpoint, ActorBlk.Hardware.Nbd.NbdServerOptions options) =>
        $"{(options.Tls == ActorBlk.Hardware.Nbd.NbdTlsMode.Require ? "nbds" : "nbd")}://{endpoint}";

    // One line per device that appears, changes or disappears in the cluster's registry.
    private static void LogClusterDevices(BlockLayer layer)
    {
        if (!layer.ClusterDevices.IsEnabled)
        {
            return;
        }

        var known = new Dictionary<string, Actors.Clustering.ClusterDevice>(StringComparer.Ordinal);
        void Report(IReadOnlyList<Actors.Clustering.ClusterDevice> snapshot)
        {
            lock (known)
            {
                foreach (var device in snapshot)
                {
                    if (!known.TryGetValue(device.Id, out var had) || had != device)
                    {
                        // The export's address too: a device is published before its node's NBD
                        // export starts, and the line for the change looked like a repeat.
                        Log.Information("Cluster device {Id}: {State}, {Size}, {Block}-byte blocks, {Queues} hardware queue(s){ReadOnly}{Export}",
                            device.Id, device.State, Sizes.Format(device.Capacity), device.LogicalBlockSize, device.HardwareQueues, device.ReadOnly ? ", read-only" : string.Empty,
                            string.IsNullOrEmpty(device.NbdEndpoint) ? ", not exported" : $", exported at {device.NbdEndpoint}");
                    }

                    known[device.Id] = device;
                }

                foreach (var gone in known.Keys.Except(snapshot.Select(d => d.Id)).ToArray())
                {
                    known.Remove(gone);
                    Log.Information("Cluster device {Id}: removed", gone);
                }
            }
        }

        layer.ClusterDevices.Watch(Report);
        Report(layer.ClusterDevices.Snapshot);
    }

    // The DotNetty TLS setup (certificate, mutual authentication, pinning), when TLS is on.
    private static AkkaConfigurationBuilder WithTls(this AkkaConfigurationBuilder builder, Akka.Remote.Transport.DotNetty.DotNettySslSetup? tls) =>
        tls is null ? builder : builder.AddSetup(tls);
}
