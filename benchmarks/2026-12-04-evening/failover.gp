# Leader kills under load, 3 oracles; written by nodepool bench --plot.
set terminal pngcairo size 1100,480 noenhanced
set output 'failover.png'
set title sprintf('nodepool failover: %d leader SIGKILLs, first grant after a median %.0f ms', 20, 261)
set grid
set xlabel 'seconds since the start'
set ylabel 'sessions started per second'
set yrange [0:*]
set key outside bottom center horizontal
set arrow from 1.478, graph 0 to 1.478, graph 1 nohead lc rgb '#d62728'
set arrow from 2.776, graph 0 to 2.776, graph 1 nohead lc rgb '#d62728'
set arrow from 4.07, graph 0 to 4.07, graph 1 nohead lc rgb '#d62728'
set arrow from 5.393, graph 0 to 5.393, graph 1 nohead lc rgb '#d62728'
set arrow from 7.587, graph 0 to 7.587, graph 1 nohead lc rgb '#d62728'
set arrow from 9.157, graph 0 to 9.157, graph 1 nohead lc rgb '#d62728'
set arrow from 10.807, graph 0 to 10.807, graph 1 nohead lc rgb '#d62728'
set arrow from 12.239, graph 0 to 12.239, graph 1 nohead lc rgb '#d62728'
set arrow from 13.806, graph 0 to 13.806, graph 1 nohead lc rgb '#d62728'
set arrow from 15.321, graph 0 to 15.321, graph 1 nohead lc rgb '#d62728'
set arrow from 16.761, graph 0 to 16.761, graph 1 nohead lc rgb '#d62728'
set arrow from 18.335, graph 0 to 18.335, graph 1 nohead lc rgb '#d62728'
set arrow from 19.811, graph 0 to 19.811, graph 1 nohead lc rgb '#d62728'
set arrow from 21.347, graph 0 to 21.347, graph 1 nohead lc rgb '#d62728'
set arrow from 22.71, graph 0 to 22.71, graph 1 nohead lc rgb '#d62728'
set arrow from 24.101, graph 0 to 24.101, graph 1 nohead lc rgb '#d62728'
set arrow from 25.566, graph 0 to 25.566, graph 1 nohead lc rgb '#d62728'
set arrow from 27.17, graph 0 to 27.17, graph 1 nohead lc rgb '#d62728'
set arrow from 28.696, graph 0 to 28.696, graph 1 nohead lc rgb '#d62728'
set arrow from 30.187, graph 0 to 30.187, graph 1 nohead lc rgb '#d62728'
plot 'failover_grants.dat' using 1:2 with steps lw 2 lc rgb '#1f77b4' title 'grants/s (red: a leader SIGKILLed)', \
     'failover_kills.dat' using ($3 >= 0 ? $3 : NaN):(0) with points pt 7 ps 1.2 lc rgb '#2ca02c' title 'first grant of the new leader'
